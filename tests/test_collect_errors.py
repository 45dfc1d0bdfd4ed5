"""Bad input to collection: clear ValueError/OSError naming the problem, no corrupt shards."""

from __future__ import annotations

import errno
import json
from pathlib import Path

import pytest
import yaml

import mlux.collect.shards as shards_mod
from mlux.atomic import atomic_write
from mlux.collect import Manifest, collect, config_from_dict, load_config, read_shard_tensor
from mlux.collect.cli import main as cli_main
from mlux.model import HookedModel
from mlux.testing import save_tiny_model


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return HookedModel.from_pretrained(str(save_tiny_model(tmp_path_factory.mktemp("m") / "t",
                                                           "llama")))


@pytest.fixture
def data_file(tmp_path):
    path = tmp_path / "prompts.jsonl"
    with path.open("w") as fh:
        for i in range(12):
            fh.write(json.dumps({"text": f"w{8 + i} w{20 + i} w9", "category": "xy"[i % 2]}) + "\n")
    return path


def make_config(model: str, data: Path, out: Path):
    return config_from_dict({"model": {"name": model, "activation_layers": "residuals_1-2"},
                             "inference": {"batch_size": 4}, "data": {"path": str(data)},
                             "output": {"result_dir": str(out), "shard_size": 3}})


def run(config, hooked):
    return collect(config, hooked=hooked, progress=False, echo=lambda s: None)


def _write_yaml(tmp_path, text: str) -> Path:
    p = tmp_path / "c.yaml"
    p.write_text(text)
    return p


def test_malformed_yaml_and_unknown_keys(tmp_path):
    with pytest.raises(ValueError, match=r"malformed YAML at line 2"):
        load_config(_write_yaml(tmp_path, "model:\n\tname: x\n"))
    bad = {"model": {"name": "x"}, "data": {"path": "d"}, "output": {"result_dir": "o"},
           "inference": {"batchsize": 4}}
    with pytest.raises(ValueError, match=r"'batchsize' \(did you mean 'batch_size'\?\).*"
                                         r"valid keys: batch_size, max_new_tokens"):
        load_config(_write_yaml(tmp_path, yaml.safe_dump(bad)))
    with pytest.raises(ValueError, match=r"unknown key 'outputs'.*valid keys: model"):
        config_from_dict({"model": {"name": "x"}, "outputs": {}})
    with pytest.raises(ValueError, match=r"inference.positions.*'generated' needs"):
        config_from_dict({**bad, "inference": {"positions": "generated"}})
    with pytest.raises(ValueError, match=r"inference.batch_size: must be an integer >= 1"):
        config_from_dict({**bad, "inference": {"batch_size": 0}})


def test_missing_data_path_and_out_of_range_spec(tiny, data_file, tmp_path):
    cfg = make_config(tiny.model_id, tmp_path / "nope.jsonl", tmp_path / "out")
    with pytest.raises(FileNotFoundError, match=r"data.path .*nope.jsonl.* does not exist"):
        run(cfg, tiny)
    cfg = make_config(tiny.model_id, data_file, tmp_path / "out").replace(
        "model", activation_layers="residuals_2-9")
    with pytest.raises(ValueError, match=r"residuals_2-9.*out of range.*0\.\.3"):
        run(cfg, tiny)
    assert not (tmp_path / "out").exists()


def test_unwritable_output(tiny, data_file, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    cfg = make_config(tiny.model_id, data_file, blocker / "out")
    with pytest.raises(OSError, match=r"output.result_dir .*file/out is not writable"):
        run(cfg, tiny)


def test_disk_full_leaves_no_corrupt_shard_and_resumes(tiny, data_file, tmp_path, monkeypatch):
    cfg = make_config(tiny.model_id, data_file, tmp_path / "out")
    real, calls = shards_mod.atomic_write_bytes, []

    def full_disk(path, data):
        calls.append(path)
        if len(calls) == 4:  # the second hook point of the second chunk
            def write(tmp):  # half the bytes land in the temp file, then the disk is full
                tmp.write_bytes(data[: len(data) // 2])
                raise OSError(errno.ENOSPC, "No space left on device")
            return atomic_write(path, write)
        return real(path, data)

    monkeypatch.setattr(shards_mod, "atomic_write_bytes", full_disk)
    with pytest.raises(OSError, match=r"No space left on device.*disk full") as info:
        run(cfg, tiny)
    assert info.value.errno == errno.ENOSPC and "shard_00001.safetensors" in str(info.value)
    root = tmp_path / "out"
    assert not list(root.rglob("*.tmp"))
    for p in root.rglob("*.safetensors"):  # every file on disk is a complete shard
        read_shard_tensor(p, "last")
    assert len(Manifest.load(root).data["chunks"]) == 1
    monkeypatch.setattr(shards_mod, "atomic_write_bytes", real)
    assert run(cfg, tiny).chunks_skipped == 1


def test_rerun_with_other_settings_refuses_to_mix_shards(tiny, data_file, tmp_path):
    cfg = make_config(tiny.model_id, data_file, tmp_path / "out")
    run(cfg, tiny)
    assert run(cfg.replace("inference", batch_size=5), tiny).chunks_written == 0
    with pytest.raises(ValueError, match=r"made differently.*hook points: residuals_2 collected "
                                         r"before, not asked for now"):
        run(cfg.replace("model", activation_layers="residuals_1"), tiny)
    with pytest.raises(ValueError, match=r"shard_size: 3 before, 4 now"):
        run(cfg.replace("output", shard_size=4), tiny)
    # the same layers in another order are the same collection
    assert run(cfg.replace("model", activation_layers=["residuals_2", "residuals_1"]),
               tiny).chunks_written == 0


def test_cli_reports_errors_without_traceback(tmp_path, capsys):
    code = cli_main(["collect", "--config", str(_write_yaml(tmp_path, "model: [\n"))])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("mlux collect: error:") and "Traceback" not in err
    assert cli_main(["analyze-layers", "--result-dir", str(tmp_path)]) == 2
    assert "no manifest.json" in capsys.readouterr().err


def test_duplicate_keys_and_categories_are_refused(tmp_path):
    twice = ("model: {name: x}\ndata: {path: d}\noutput: {result_dir: o}\n"
             "sae: {k: 8}\nsae: {k: 16}\n")
    with pytest.raises(ValueError, match=r"line 5.*key 'sae' appears twice"):
        load_config(_write_yaml(tmp_path, twice))
    with pytest.raises(ValueError, match=r"line 1.*key 'name' appears twice"):
        load_config(_write_yaml(tmp_path, "model: {name: x, name: y}\n"))
    with pytest.raises(ValueError, match=r"data.categories: lists 'happy' more than once"):
        config_from_dict({"model": {"name": "x"}, "output": {"result_dir": "o"},
                          "data": {"path": "d", "categories": ["happy", "sad", "happy"]}})


def test_hand_edited_manifest_gives_a_one_line_error(tiny, data_file, tmp_path, capsys):
    from mlux.collect import analyze_layers

    cfg = make_config(tiny.model_id, data_file, tmp_path / "out")
    run(cfg, tiny)
    with pytest.raises(ValueError, match="categories must be two different names"):
        analyze_layers(tmp_path / "out", categories=["x", "x"])
    path = tmp_path / "out" / "manifest.json"
    data = json.loads(path.read_text())
    del data["chunks"]["x/00001"]["stop"]
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"manifest.json: chunks\['x/00001'\].key 'stop' is "
                                         r"missing \(the file was edited"):
        Manifest.load(tmp_path / "out")
    del data["hook_points"]
    path.write_text(json.dumps(data))
    assert cli_main(["analyze-layers", "--result-dir", str(tmp_path / "out")]) == 2
    assert "key 'hook_points' is missing" in capsys.readouterr().err
