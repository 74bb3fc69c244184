"""fastgen_dm.batch.collate: columns in FastGen's layout, dropping rows (the zip and wds batches are tested with their families)."""

import torch

from fastgen_dm.batch import collate_column, drop_rows, wds_batch


def test_drop_rows_removes_the_rows_from_every_per_sample_value_and_keeps_the_rest():
    samples = [{"real": torch.full((2,), float(i)), "condition": f"caption {i}"} for i in range(4)]
    constants = {"neg_condition": torch.ones(3), "preset": "no"}
    batch = wds_batch(samples, ["a", "b", "c", "d"], ["s0", "s0", "s1", "s1"], constants)
    batch["cropping_params"] = {"crop_x0": torch.arange(4), "crop_w": torch.full((4,), 8)}
    batch["note"] = "not per sample"
    out = drop_rows(batch, {1, 3})
    assert out["fname"] == ["a", "c"] and out["shard"] == ["s0", "s1"] and out["condition"] == ["caption 0", "caption 2"]
    assert torch.equal(out["real"], torch.tensor([[0.0, 0.0], [2.0, 2.0]]))
    assert out["neg_condition"].shape == (2, 3) and out["preset"] == ["no", "no"]  # constants follow the rows
    assert torch.equal(out["cropping_params"]["crop_x0"], torch.tensor([0, 2])) and out["note"] == "not per sample"
    assert torch.equal(out["cropping_params"]["crop_w"], torch.tensor([8, 8]))
    assert drop_rows(batch, set())["fname"] == batch["fname"] and len(batch["fname"]) == 4  # the input is untouched


def test_dicts_collate_into_a_dict_of_int64_columns_as_fastgen_default_collate_does():
    params = [{"resize_w": 853, "resize_h": 480, "crop_x0": 10 + i, "crop_y0": 0, "crop_w": 832, "crop_h": 480} for i in range(3)]
    out = collate_column(params)
    assert list(out) == ["resize_w", "resize_h", "crop_x0", "crop_y0", "crop_w", "crop_h"]
    assert all(v.dtype == torch.int64 and v.shape == (3,) for v in out.values())
    assert out["crop_x0"].tolist() == [10, 11, 12]
    assert collate_column([{"a": 1}, {"b": 1}]) == [{"a": 1}, {"b": 1}]  # different keys stay a list
