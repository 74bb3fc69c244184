"""fastgen_dm.decode.sample and fastgen_dm.batch.constants: WebDataset members -> decoded samples -> FastGen batch dictionaries."""

import io
import json
import pickle
import re
import uuid
from pathlib import Path
from typing import get_args

import fsspec
import numpy as np
import pytest
import torch
from safetensors.torch import save as safetensors_save

from fastgen_dm.batch.constants import PresetName, load_constants, preset
from fastgen_dm.decode.sample import BadSampleError, SampleFilteredOut, SampleSpec
from fastgen_dm.batch.collate import wds_batch
from fastgen_dm.decode import PickleRefusedError

SHARED_PRESETS = Path(__file__).resolve().parents[3] / "shared" / "compat" / "presets.json"
PACKAGE_PRESETS = Path(__file__).resolve().parents[2] / "fastgen_dm" / "batch" / "presets.json"


class Custom:
    """A class that only full pickle can rebuild."""

    def __init__(self, value):
        self.value = value


def pth(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def npy(array) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


def js(obj) -> bytes:
    return json.dumps(obj).encode()


SCORE = {"score": {"threshold": 5.5, "score_key": "aesthetic_score"}}


# --- decoding ------------------------------------------------------------------------------------


def test_decodes_each_suffix():
    latent = torch.randn(4, 8, 8)
    emb = np.arange(12, dtype=np.float32).reshape(3, 4)
    st = torch.ones(2, 3, dtype=torch.float16)
    spec = SampleSpec(
        key_map={"real": "latent.pth", "emb": "npy", "meta": "json", "caption": "txt", "st": "safetensors", "label": "cls"}
    )
    members = {
        "latent.pth": pth(latent),
        "npy": npy(emb),
        "json": js({"a": 1, "b": [1, 2]}),
        "txt": "une légende\n".encode(),
        "safetensors": safetensors_save({"x": st}),
        "cls": b" 7\n",
    }
    out = spec.decode(members)
    assert list(out) == ["real", "emb", "meta", "caption", "st", "label"]
    assert torch.equal(out["real"], latent)
    assert isinstance(out["emb"], np.ndarray) and np.array_equal(out["emb"], emb)
    assert out["meta"] == {"a": 1, "b": [1, 2]}
    assert out["caption"] == "une légende\n"
    assert out["st"].dtype == torch.float16 and torch.equal(out["st"], st)
    assert out["label"] == 7


def test_safetensors_with_several_tensors_is_a_dict():
    spec = SampleSpec(key_map={"x": "safetensors"})
    out = spec.decode({"safetensors": safetensors_save({"a": torch.zeros(2), "b": torch.ones(3)})})
    assert set(out["x"]) == {"a", "b"}


def test_txt_extensions_decode_as_text():
    spec = SampleSpec(key_map={"condition": "prompt", "caption": "long.caption"}, txt_extensions=("prompt", "caption"))
    out = spec.decode({"prompt": b"a dog", "long.caption": b"a long dog"})
    assert out == {"condition": "a dog", "caption": "a long dog"}


def test_only_key_map_members_are_decoded():
    spec = SampleSpec(key_map={"real": "latent.pth"})
    members = {
        "latent.pth": pth(torch.zeros(2)),
        "weird.bin": b"\x00\x01",  # no decoder for this suffix: never looked up
        "npy": b"not an npy file",  # a decodable suffix with broken bytes: never decoded
        "pkl": b"\x80\x04K\x01.",  # pickle: never decoded, so never refused
        "json": b"{broken",  # no score filter: the json is not read
    }
    assert list(spec.decode(members)) == ["real"]
    assert spec.members_needed() == frozenset({"latent.pth"})


def test_members_needed_adds_json_for_the_score_filter():
    spec = SampleSpec(key_map={"real": "latent.pth", "condition": "txt"}, presets_filter=SCORE)
    assert spec.members_needed() == frozenset({"latent.pth", "txt", "json"})
    assert SampleSpec(key_map={"c": "txt"}, presets_filter={"empty_keys": ["c"]}).members_needed() == {"txt"}


def test_missing_member_is_filtered_out_naming_the_suffix_and_the_present_ones():
    spec = SampleSpec(key_map={"real": "latent.pth", "condition": "txt_emb.pth"})
    with pytest.raises(
        SampleFilteredOut,
        match=re.escape("missing_member: no member 'txt_emb.pth' (key_map['condition']); its members: ['jpg', 'latent.pth']"),
    ) as info:
        spec.decode({"latent.pth": pth(torch.zeros(1)), "jpg": b""})
    assert info.value.filter_name == "missing_member"
    again = pickle.loads(pickle.dumps(info.value))  # crosses worker boundaries intact
    assert str(again) == str(info.value) and again.filter_name == "missing_member"


def test_a_default_stands_in_for_a_missing_member_and_the_member_wins_when_present():
    spec = SampleSpec(key_map={"real": "npy", "condition": "txt"}, defaults={"condition": "fallback"})
    assert spec.decode({"npy": npy(np.zeros(2)), "txt": b"a cat"})["condition"] == "a cat"
    decoded = spec.decode({"npy": npy(np.zeros(2))})
    assert list(decoded) == ["real", "condition"] and decoded["condition"] == "fallback"
    with pytest.raises(SampleFilteredOut, match=re.escape("missing_member: no member 'npy' (key_map['real'])")):
        spec.decode({"txt": b"a cat"})  # "real" has no default


def test_defaults_must_name_key_map_outputs():
    with pytest.raises(ValueError, match=re.escape("defaults ['neg'] are not key_map outputs (['real'])")):
        SampleSpec(key_map={"real": "npy"}, defaults={"neg": ""})


def test_undecodable_member_raises_the_decoders_error_with_a_note():
    spec = SampleSpec(key_map={"emb": "npy"})
    with pytest.raises(ValueError) as info:
        spec.decode({"npy": b"not an npy file"})
    assert "while decoding member 'npy' for key_map['emb']" in info.value.__notes__


def test_pth_needing_pickle_is_refused_unless_allowed():
    data = pth({"obj": Custom(3)})
    with pytest.raises(PickleRefusedError, match=re.escape("opt in with allow_pickle=['pth']")):
        SampleSpec(key_map={"x": "latent.pth"}).decode({"latent.pth": data})
    out = SampleSpec(key_map={"x": "latent.pth"}, allow_pickle=["pth"]).decode({"latent.pth": data})
    assert out["x"]["obj"].value == 3


def test_pickle_suffix_in_key_map_is_refused_at_construction():
    with pytest.raises(PickleRefusedError, match=re.escape("key_map['meta'] = 'meta.pkl': 'meta.pkl' is a pickle payload")):
        SampleSpec(key_map={"meta": "meta.pkl"})
    spec = SampleSpec(key_map={"meta": "meta.pkl"}, allow_pickle=("pkl",))
    assert spec.decode({"meta.pkl": pickle.dumps({"k": 1})}) == {"meta": {"k": 1}}


# --- construction errors -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"key_map": {}}, ValueError, "key_map must map output keys to member suffixes"),
        ({"key_map": {"real": "latent.bin"}}, ValueError, "key_map['real'] = 'latent.bin': no decoder for suffix 'latent.bin'"),
        ({"key_map": {"fname": "txt"}}, ValueError, "key_map['fname']: 'fname' is written by the batch itself"),
        ({"key_map": {"real": ".npy"}}, ValueError, "give the suffix without a leading dot, e.g. 'npy'"),
        ({"key_map": {"c": "txt"}, "txt_extensions": "txt"}, TypeError, "txt_extensions must be a list of strings, got 'txt'"),
        ({"key_map": {"c": "txt"}, "allow_pickle": "pth"}, TypeError, "allow_pickle must be a list of strings, got 'pth'"),
        (
            {"key_map": {"c": "txt"}, "presets_filter": {"scores": {}}},
            ValueError,
            "presets_filter has unknown filter 'scores'; known filters: ['empty_keys', 'score']",
        ),
        (
            {"key_map": {"c": "txt"}, "presets_filter": {"score": {"threshold": 5.5}}},
            ValueError,
            "presets_filter['score'] = {'threshold': 5.5}: expected exactly the keys 'threshold' and 'score_key'",
        ),
        (
            {"key_map": {"c": "txt"}, "presets_filter": {"score": {"threshold": "high", "score_key": "s"}}},
            ValueError,
            "presets_filter['score']['threshold'] = 'high': expected a finite number",
        ),
        (
            {"key_map": {"c": "txt"}, "presets_filter": {"empty_keys": ["caption"]}},
            ValueError,
            "presets_filter['empty_keys'] names ['caption'], which are not key_map outputs; allowed: ['c']",
        ),
        (
            {"key_map": {"c": "txt"}, "presets_filter": {"empty_keys": {"key": ["c"]}}},
            ValueError,
            "expected a list of keys or {'keys': [...]}",
        ),
    ],
)
def test_spec_validation(kwargs, error, message):
    with pytest.raises(error, match=re.escape(message)):
        SampleSpec(**kwargs)


def test_spec_is_picklable_and_copies_its_inputs():
    key_map = {"real": "latent.pth"}
    spec = SampleSpec(key_map=key_map, presets_filter=SCORE)
    key_map["other"] = "npy"
    assert spec.key_map == {"real": "latent.pth"}
    clone = pickle.loads(pickle.dumps(spec))
    assert clone == spec and clone.members_needed() == spec.members_needed()


# --- filters -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("meta", "kept"),
    [
        ({"aesthetic_score": 6.0}, True),
        ({"aesthetic_score": 5.5}, True),  # >= threshold keeps
        ({"aesthetic_score": 5}, False),
        ({"aesthetic_score": 1.2, "other": 9}, False),
        ({"other": 9}, True),  # no score: kept, like a sample without json
        (None, True),  # no json member
    ],
)
def test_score_filter(meta, kept):
    spec = SampleSpec(key_map={"condition": "txt"}, presets_filter=SCORE)
    members = {"txt": b"a cat"}
    if meta is not None:
        members["json"] = js(meta)
    if kept:
        assert spec.decode(members) == {"condition": "a cat"}
    else:
        with pytest.raises(SampleFilteredOut, match=re.escape("score: json['aesthetic_score'] = ")) as info:
            spec.decode(members)
        assert info.value.filter_name == "score"
        assert not isinstance(info.value, (KeyError, ValueError))  # never confused with bad data
        assert pickle.loads(pickle.dumps(info.value)).filter_name == "score"


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"{not json", "member 'json' is not valid JSON"),
        (b"\xff\xfe\x00garbage", "member 'json' is not valid JSON"),
        (b"[1, 2]", "member 'json' holds a list, not an object; the score filter reads json['aesthetic_score']"),
        (js({"aesthetic_score": "high"}), "json['aesthetic_score'] = 'high' is not a number"),
    ],
)
def test_score_filter_bad_json_is_bad_data(raw, message):
    spec = SampleSpec(key_map={"condition": "txt"}, presets_filter=SCORE)
    with pytest.raises(BadSampleError, match=re.escape(message)):
        spec.decode({"txt": b"a cat", "json": raw})


def test_score_filter_reuses_a_json_that_key_map_also_wants():
    spec = SampleSpec(key_map={"meta": "json"}, presets_filter=SCORE)
    assert spec.decode({"json": js({"aesthetic_score": 7})}) == {"meta": {"aesthetic_score": 7}}


@pytest.mark.parametrize("config", [["condition"], {"keys": ["condition"]}])
@pytest.mark.parametrize(
    ("member", "suffix", "dropped"),
    [
        (b"", "txt", True),
        (b" \n\t", "txt", True),
        (b"a cat", "txt", False),
        (pth(torch.zeros(0, 4)), "pth", True),
        (pth(torch.zeros(1, 4)), "pth", False),
        (npy(np.zeros((3, 0))), "npy", True),
        (npy(np.zeros(3)), "npy", False),
    ],
)
def test_empty_keys_filter(config, member, suffix, dropped):
    spec = SampleSpec(key_map={"condition": suffix}, presets_filter={"empty_keys": config})
    members = {suffix: member}
    if dropped:
        with pytest.raises(SampleFilteredOut, match=re.escape(f"empty_keys: 'condition' (member '{suffix}') is empty")):
            spec.decode(members)
    else:
        assert "condition" in spec.decode(members)


def test_missing_member_is_filtered_before_the_score_filter_reads_json():
    spec = SampleSpec(key_map={"real": "npy"}, presets_filter=SCORE)
    with pytest.raises(SampleFilteredOut) as info:
        spec.decode({"json": js({"aesthetic_score": 0})})
    assert info.value.filter_name == "missing_member"


# --- presets -------------------------------------------------------------------------------------


def test_presets_are_the_exact_shared_strings():
    expected = json.loads(PACKAGE_PRESETS.read_text(encoding="utf-8"))
    if SHARED_PRESETS.exists():
        assert PACKAGE_PRESETS.read_bytes() == SHARED_PRESETS.read_bytes()
        expected = json.loads(SHARED_PRESETS.read_text(encoding="utf-8"))
    assert set(expected) == set(get_args(PresetName)) == {"neg_prompt_wan", "neg_prompt_cosmos", "empty_string"}
    for name, text in expected.items():
        assert preset(name) == text
    assert preset("empty_string") == ""
    assert preset("neg_prompt_wan").startswith("Bright tones, overexposed")


def test_unknown_preset_lists_the_known_ones():
    with pytest.raises(
        ValueError,
        match=re.escape("preset 'neg_prompt_sdxl' is unknown; known presets: ['empty_string', 'neg_prompt_cosmos', 'neg_prompt_wan']"),
    ):
        preset("neg_prompt_sdxl")


# --- constants -----------------------------------------------------------------------------------


def test_load_constants_resolves_relative_paths_against_base_dir(tmp_path):
    neg = torch.randn(7, 16)
    (tmp_path / "emb").mkdir()
    (tmp_path / "emb" / "neg.pth").write_bytes(pth(neg))
    (tmp_path / "null.npy").write_bytes(npy(np.zeros(5, dtype=np.float32)))
    absolute = tmp_path / "elsewhere.txt"
    absolute.write_text("bad, ugly")
    constants = load_constants(
        {"neg_condition": "emb/neg.pth", "null": "null.npy", "neg_text": str(absolute)},
        {"neg_prompt": "neg_prompt_cosmos", "empty": "empty_string"},
        base_dir=str(tmp_path),
    )
    assert list(constants) == ["neg_condition", "null", "neg_text", "neg_prompt", "empty"]
    assert torch.equal(constants["neg_condition"], neg)
    assert constants["null"].shape == (5,)
    assert constants["neg_text"] == "bad, ugly"
    assert constants["neg_prompt"] == preset("neg_prompt_cosmos") and constants["empty"] == ""


def test_load_constants_joins_urls():
    base = f"memory://fastgen-test-{uuid.uuid4().hex}/latents"
    fs = fsspec.filesystem("memory")
    fs.pipe(f"{base}/neg.pth", pth(torch.ones(3)))
    try:
        for base_dir in (base, base + "/"):
            assert torch.equal(load_constants({"neg": "neg.pth"}, None, base_dir)["neg"], torch.ones(3))
    finally:
        fs.rm(base.split("/latents")[0], recursive=True)


def test_missing_file_names_key_and_path(tmp_path):
    with pytest.raises(
        FileNotFoundError,
        match=re.escape(f"files_map['neg_condition'] = 'neg.pth': {str(tmp_path / 'neg.pth')!r} does not exist"),
    ):
        load_constants({"neg_condition": "neg.pth"}, None, base_dir=tmp_path)


def test_optional_missing_file_is_left_out(tmp_path):
    (tmp_path / "a.npy").write_bytes(npy(np.ones(2)))
    constants = load_constants(
        {"a": "a.npy", "neg_condition": "neg.pth"}, {"p": "empty_string"}, tmp_path, optional_files=["neg_condition"]
    )
    assert list(constants) == ["a", "p"]


@pytest.mark.parametrize(
    ("files_map", "presets_map", "optional", "message"),
    [
        ({"neg": "neg.pth"}, {"neg": "empty_string"}, (), "keys ['neg'] are in both files_map and presets_map"),
        ({"neg": "neg.pth"}, None, ["negative"], "optional_files names ['negative'], which are not files_map keys; allowed: ['neg']"),
        ({"neg": "emb/neg.bin"}, None, (), "files_map['neg'] = 'emb/neg.bin': no decoder for suffix 'neg.bin'"),
        ({"neg": "neg"}, None, (), "files_map['neg'] = 'neg': no decoder for suffix 'neg'"),
        (None, {"neg": "wan"}, (), "presets_map['neg']: preset 'wan' is unknown; known presets: ['empty_string', "),
        (None, {"shard": "empty_string"}, (), "presets_map['shard']: 'shard' is written by the batch itself"),
    ],
)
def test_load_constants_validation(tmp_path, files_map, presets_map, optional, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        load_constants(files_map, presets_map, tmp_path, optional_files=optional)


def test_load_constants_refuses_pickle_files_unless_allowed(tmp_path):
    (tmp_path / "neg.pth").write_bytes(pth(Custom(1)))
    with pytest.raises(PickleRefusedError) as info:
        load_constants({"neg": "neg.pth"}, None, tmp_path)
    assert any("files_map['neg'] = 'neg.pth'" in note for note in info.value.__notes__)
    assert load_constants({"neg": "neg.pth"}, None, tmp_path, allow_pickle=["pth"])["neg"].value == 1


# --- batches -------------------------------------------------------------------------------------


def test_wds_batch_layout_shapes_and_types():
    samples = [
        {
            "real": torch.full((4, 2, 2), float(i)),
            "emb": np.full((3,), i, dtype=np.float32),
            "caption": f"caption {i}",
            "meta": {"i": i},
            "tokens": torch.zeros(i + 1),  # unequal shapes
            "label": i,
        }
        for i in range(3)
    ]
    neg = torch.randn(5, 8)
    null = np.zeros((2,), dtype=np.float32)
    constants = {"neg_condition": neg, "null": null, "neg_prompt": preset("neg_prompt_wan")}
    batch = wds_batch(samples, ["k0", "k1", "k2"], ["s0.tar", "s0.tar", "s1.tar"], constants)

    assert list(batch) == ["fname", "shard", "real", "emb", "caption", "meta", "tokens", "label", "neg_condition", "null", "neg_prompt"]
    assert batch["fname"] == ["k0", "k1", "k2"] and batch["shard"] == ["s0.tar", "s0.tar", "s1.tar"]
    assert batch["real"].shape == (3, 4, 2, 2) and batch["real"][2].eq(2).all()
    assert isinstance(batch["emb"], torch.Tensor) and batch["emb"].shape == (3, 3) and batch["emb"].dtype == torch.float32
    assert batch["caption"] == ["caption 0", "caption 1", "caption 2"]
    assert batch["meta"]["i"].tolist() == [0, 1, 2]  # dicts with the same keys collate per key, as in FastGen
    assert isinstance(batch["tokens"], list) and [t.shape[0] for t in batch["tokens"]] == [1, 2, 3]
    assert batch["label"].dtype == torch.int64 and batch["label"].tolist() == [0, 1, 2]
    assert batch["neg_condition"].shape == (3, 5, 8) and torch.equal(batch["neg_condition"][1], neg)
    assert batch["null"].shape == (3, 2)
    assert batch["neg_prompt"] == [preset("neg_prompt_wan")] * 3


def test_constants_are_expanded_without_copying():
    neg = torch.randn(64, 32)
    arr = np.ones((4, 4), dtype=np.float32)
    batch = wds_batch([{"x": 1}] * 8, ["k"] * 8, ["s"] * 8, {"neg": neg, "arr": arr, "text": "t"})
    assert batch["neg"].shape == (8, 64, 32)
    assert batch["neg"].stride(0) == 0
    assert batch["neg"].data_ptr() == neg.data_ptr()
    assert batch["neg"].untyped_storage().nbytes() == neg.untyped_storage().nbytes()
    assert batch["arr"].stride(0) == 0 and batch["arr"].data_ptr() == arr.__array_interface__["data"][0]
    assert all(s is batch["text"][0] for s in batch["text"])


def test_wds_batch_of_decoded_samples():
    spec = SampleSpec(key_map={"real": "latent.pth", "condition": "txt"})
    samples = [spec.decode({"latent.pth": pth(torch.randn(4, 8, 8)), "txt": f"c{i}".encode()}) for i in range(2)]
    constants = load_constants(None, {"neg_condition": "empty_string"}, None)
    batch = wds_batch(samples, ["a", "b"], ["s", "s"], constants)
    assert batch["real"].shape == (2, 4, 8, 8)
    assert batch["condition"] == ["c0", "c1"] and batch["neg_condition"] == ["", ""]


@pytest.mark.parametrize(
    ("samples", "fnames", "shards", "constants", "message"),
    [
        ([], [], [], {}, "got 0 samples, 0 fnames, 0 shards"),
        ([{"x": 1}], ["a", "b"], ["s"], {}, "got 1 samples, 2 fnames, 1 shards"),
        ([{"x": 1}, {"y": 1}], ["a", "b"], ["s", "s"], {}, "sample 'b' has keys ['y']; the batch's first sample has ['x']"),
        ([{"x": 1}], ["a"], ["s"], {"x": "c"}, "batch keys ['x'] clash"),
        ([{"fname": 1}], ["a"], ["s"], {}, "batch keys ['fname'] clash"),
    ],
)
def test_wds_batch_errors(samples, fnames, shards, constants, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        wds_batch(samples, fnames, shards, constants)


def test_read_only_arrays_collate_without_warnings(recwarn):
    frozen = np.ones((2, 2), dtype=np.uint8)
    frozen.setflags(write=False)  # like np.asarray of a PIL image
    batch = wds_batch([{"img": frozen}, {"img": frozen}], ["a", "b"], ["s", "s"], {"c": frozen})
    assert batch["img"].shape == (2, 2, 2) and batch["c"].shape == (2, 2, 2)
    assert not [w for w in recwarn if "not writable" in str(w.message)]
