"""fastgen_dm.batch.collate: dropping rows from a WebDataset batch (the zip and wds batches are tested with their families)."""

import torch

from fastgen_dm.batch import drop_rows, wds_batch


def test_drop_rows_removes_the_rows_from_every_per_sample_value_and_keeps_the_rest():
    samples = [{"real": torch.full((2,), float(i)), "condition": f"caption {i}"} for i in range(4)]
    constants = {"neg_condition": torch.ones(3), "preset": "no"}
    batch = wds_batch(samples, ["a", "b", "c", "d"], ["s0", "s0", "s1", "s1"], constants)
    batch["cropping_params"] = [{"x": i} for i in range(4)]
    batch["note"] = "not per sample"
    out = drop_rows(batch, {1, 3})
    assert out["fname"] == ["a", "c"] and out["shard"] == ["s0", "s1"] and out["condition"] == ["caption 0", "caption 2"]
    assert torch.equal(out["real"], torch.tensor([[0.0, 0.0], [2.0, 2.0]]))
    assert out["neg_condition"].shape == (2, 3) and out["preset"] == ["no", "no"]  # constants follow the rows
    assert out["cropping_params"] == [{"x": 0}, {"x": 2}] and out["note"] == "not per sample"
    assert drop_rows(batch, set())["fname"] == batch["fname"] and len(batch["fname"]) == 4  # the input is untouched
