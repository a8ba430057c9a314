"""Shards, checkpoints and config: round trips, resumption, clear errors."""

import dataclasses
import json

import pytest
import torch
from safetensors.torch import save_file

from jointdit.checkpoint import load_checkpoint, save_checkpoint
from jointdit.config import from_dict
from jointdit.data.shards import (
    INDEX,
    ShardPlan,
    build_shards,
    load_split,
    shard_is_current,
    write_index,
    write_shard,
)
from jointdit.model.jointdit import JointDiT, JointDiTConfig
from jointdit.training import TrainConfig
from tests.conftest import TINY, randomize, tiny_inputs


def _encode(row):
    i = row["i"]
    return {
        "video": torch.full((2, 3, 4, 4), float(i)),
        "image": torch.full((3, 4, 4), float(i)),
        "audio": torch.full((1, 8, 5), float(-i)),
        "text": torch.tensor([i, 0]),
    }


def test_shards_round_trip_and_resume(tmp_path):
    rows = [{"i": i, "path": f"clip{i}.mp4"} for i in range(5)]
    calls = []

    def encode(row):
        calls.append(row["i"])
        return _encode(row)

    entries = build_shards(tmp_path, "train", rows, lambda rs: map(encode, rs), shard_size=2)
    write_index(tmp_path, {"shards": entries})
    assert [e["clips"] for e in entries] == [2, 2, 1]
    assert calls == [0, 1, 2, 3, 4]
    data = load_split(tmp_path, "train")
    assert data.batch.video.shape == (5, 2, 3, 4, 4)
    assert data.batch.video[:, 0, 0, 0, 0].tolist() == [0, 1, 2, 3, 4]
    assert [c["path"] for c in data.clips] == [r["path"] for r in rows]

    # a re-run reuses finished shards; a shard whose clip list changed is rebuilt
    calls.clear()
    rows[3] = {"i": 9, "path": "clip9.mp4"}
    build_shards(tmp_path, "train", rows, lambda rs: map(encode, rs), shard_size=2)
    assert calls == [2, 9]
    assert not list(tmp_path.glob(".*"))  # no temporary file left


def test_a_truncated_shard_is_rebuilt(tmp_path):
    rows = [{"i": i} for i in range(2)]
    build_shards(tmp_path, "val", rows, lambda rs: map(_encode, rs), shard_size=2)
    shard = tmp_path / "val-0000.safetensors"
    shard.write_bytes(shard.read_bytes()[:100])
    calls = []
    build_shards(
        tmp_path, "val", rows, lambda rs: (calls.append(1) or _encode(r) for r in rs), shard_size=2
    )
    assert len(calls) == 2


def test_the_index_drops_shards_of_an_earlier_larger_run(tmp_path):
    rows = [{"i": i, "path": f"clip{i}.mp4"} for i in range(5)]
    build_shards(tmp_path, "train", rows, lambda rs: map(_encode, rs), shard_size=2)
    entries = build_shards(tmp_path, "train", rows[:2], lambda rs: map(_encode, rs), shard_size=2)
    write_index(tmp_path, {"shards": entries})
    assert sorted(p.name for p in tmp_path.glob("*.safetensors")) == ["train-0000.safetensors"]
    assert load_split(tmp_path, "train").batch.video.shape[0] == 2


def test_missing_split_is_a_clear_error(tmp_path):
    write_index(tmp_path, {"shards": []})
    with pytest.raises(ValueError, match=f"{INDEX}.*no clips in split 'val'"):
        load_split(tmp_path, "val")


def test_checkpoint_round_trip(tmp_path):
    model = randomize(JointDiT(TINY)).eval()
    save_checkpoint(tmp_path / "ck", model, {"stage": "x"})
    loaded, meta = load_checkpoint(tmp_path / "ck")
    assert meta == {"stage": "x"}
    assert loaded.cfg == TINY
    x = tiny_inputs()
    torch.testing.assert_close(loaded(**x), model(**x))
    assert json.loads((tmp_path / "ck" / "config.json").read_text())["model"]["dim"] == TINY.dim


def test_checkpoint_errors_name_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"missing model\.safetensors"):
        load_checkpoint(tmp_path)
    save_checkpoint(tmp_path, JointDiT(TINY))
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["model"]["depth"] = 3
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="weights do not fit JointDiT"):
        load_checkpoint(tmp_path)


def test_from_dict_builds_and_rejects_unknown_keys():
    cfg = from_dict(TrainConfig, {"steps": 3, "trainable": ["a.*", "b"]})
    assert cfg.steps == 3 and cfg.trainable == ("a.*", "b")
    with pytest.raises(ValueError, match=r"stage_a: unknown keys \['stpes'\]"):
        from_dict(TrainConfig, {"stpes": 3}, "stage_a")
    assert from_dict(JointDiTConfig, dataclasses.asdict(TINY)) == TINY


def test_equal_shards_are_equal_bytes(tmp_path):
    # DVC hashes the cache file by file: an equal shard written again must not look changed
    rows = [{"path": "a.mp4", "window": 0}]
    for k in range(8):
        write_shard(tmp_path / f"{k}.safetensors", {"x": torch.arange(3.0)}, rows, "e")
    assert len({p.read_bytes() for p in tmp_path.iterdir()}) == 1


def test_a_shard_in_the_earlier_two_key_format_is_still_current(tmp_path):
    shard = ShardPlan(tmp_path / "train-0000.safetensors", "train", [{"path": "a.mp4"}])
    meta = {"clips": json.dumps(shard.rows), "encoding": "e"}
    save_file({"x": torch.zeros(1)}, str(shard.path), meta)
    assert shard_is_current(shard, "e")
    assert not shard_is_current(shard, "f")
