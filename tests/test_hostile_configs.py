"""Hostile collection configs and folders (issue 27 items 4-5, issue 26 item 14): each is
refused with one clear, bounded message before any work, or read correctly; nothing hangs,
nothing outside mlux's own files is touched. A few seconds on the tiny model."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Callable

import pytest

from mlux.collect import collect, config_from_dict, load_config
from mlux.collect.chunks import prepare_dir
from mlux.collect.cli import main as cli_main
from mlux.collect.config_checks import MAX_EXPANDED_NODES
from mlux.collect.data import read_prompts
from mlux.collect.lock import remove_orphans
from mlux.model import HookedModel
from mlux.testing import save_tiny_model

BASE = """model: {name: %(model)s, activation_layers: residuals_1}
data: {path: %(data)s}
output: {result_dir: %(out)s, shard_size: 4}
"""


def _bomb(levels: int) -> str:
    lines = ["a: &a [x, x, x, x, x, x, x, x, x]"]
    for i in range(1, levels):
        prev, name = chr(ord("a") + i - 1), chr(ord("a") + i)
        lines.append(f"{name}: &{name} [{', '.join(['*' + prev] * 9)}]")
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> HookedModel:
    return HookedModel.from_pretrained(str(save_tiny_model(tmp_path_factory.mktemp("m") / "t",
                                                           "llama")))


@pytest.fixture
def data_file(tmp_path: Path) -> Path:
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps({"text": f"w{8 + i} w9", "category": "xy"[i % 2]}) + "\n"
                            for i in range(8)))
    return path


def _config(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "c.yaml"
    path.write_text(body)
    return path


def _run(config: object, hooked: HookedModel, **kw: object) -> object:
    return collect(config, hooked=hooked, progress=False, echo=lambda s: None, **kw)


# -- YAML: alias bombs, huge values ---------------------------------------------------------------

@pytest.mark.parametrize("where", ["top", "sae.hook_points"])
def test_alias_bomb_refused_quickly(where: str, tmp_path: Path) -> None:
    bomb = _bomb(9)  # 9**9 values once expanded
    if where == "top":
        text = bomb
    else:  # the place that passed --dry-run and reached 2.5 GB
        text = bomb + "sae: {hook_points: *i}\n"
    with pytest.raises(ValueError, match=f"aliases expand to more than {MAX_EXPANDED_NODES}"):
        load_config(_config(tmp_path, text))


def test_modest_aliases_still_work(tmp_path: Path, data_file: Path) -> None:
    text = ("model: {name: m, activation_layers: &l [residuals_1, residuals_2]}\n"
            f"data: {{path: {data_file}}}\noutput: {{result_dir: {tmp_path / 'o'}}}\n"
            "sae: {hook_points: *l}\n")
    cfg = load_config(_config(tmp_path, text))
    assert cfg.sae.hook_points == cfg.model.activation_layers == ("residuals_1", "residuals_2")


def test_recursive_alias_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="recursive config"):
        load_config(_config(tmp_path, "a: &a [*a]\n"))


@pytest.mark.parametrize(("raw", "section"), [
    ({"model": {"name": "x" * 50_000}, "data": {"path": "d"}, "output": {"result_dir": "o"},
      "inference": {"batch_size": "y" * 50_000}}, "inference.batch_size"),
    ({"model": {"name": "m"}, "data": {"path": "d", "categories": ["z" * 50_000, 1]},
      "output": {"result_dir": "o"}}, "data.categories"),
    ({"model": {"name": "m", "zzz" * 20_000: 1}, "data": {"path": "d"},
      "output": {"result_dir": "o"}}, "unknown key"),
])
def test_errors_quote_untrusted_values_bounded(raw: dict, section: str) -> None:
    with pytest.raises(ValueError, match=section) as info:
        config_from_dict(raw)
    assert len(str(info.value)) < 600 and "characters)" in str(info.value)


def test_oversized_and_deeply_nested_configs_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="at most 1048576"):
        load_config(_config(tmp_path, "model: {name: m}\n# " + "x" * (1 << 20) + "\n"))
    with pytest.raises(ValueError, match="nested too deeply|malformed YAML"):
        load_config(_config(tmp_path, "a: " + "[" * 5000 + "]" * 5000 + "\n"))


# -- output.result_dir ----------------------------------------------------------------------------

def _make_file(tmp_path: Path) -> str:
    (tmp_path / "afile").write_text("mine")
    return str(tmp_path / "afile")


def _make_loop(tmp_path: Path) -> str:
    os.symlink(tmp_path / "loop_b", tmp_path / "loop_a")
    os.symlink(tmp_path / "loop_a", tmp_path / "loop_b")
    return str(tmp_path / "loop_a")


def _make_dangling(tmp_path: Path) -> str:
    os.symlink(tmp_path / "nowhere", tmp_path / "dangling")
    return str(tmp_path / "dangling")


@pytest.mark.parametrize(("make", "message"), [
    (_make_file, "is a file, not a folder"),
    (_make_loop, "symlink that leads nowhere"),
    (_make_dangling, "symlink that leads nowhere"),
])
def test_unfit_result_dir_refused(make: Callable[[Path], str], message: str, tiny: HookedModel,
                                  data_file: Path, tmp_path: Path) -> None:
    out = make(tmp_path)
    cfg = config_from_dict({"model": {"name": tiny.model_id, "activation_layers": "residuals_1"},
                            "data": {"path": str(data_file)}, "output": {"result_dir": out}})
    with pytest.raises(ValueError, match=message):
        _run(cfg, tiny)


def test_root_result_dir_refused() -> None:
    # prepare_dir alone: were the check ever lost, a full collection would write into "/"
    with pytest.raises(ValueError, match="is the file-system root"):
        prepare_dir(Path("/"), force=True)
    with pytest.raises(ValueError, match="is the file-system root"):
        prepare_dir(Path("/tmp/.."), force=True)


@pytest.mark.parametrize("blank", ["", "  "])
def test_empty_result_dir_refused(blank: str) -> None:
    with pytest.raises(ValueError, match="output.result_dir: is empty"):
        config_from_dict({"model": {"name": "m"}, "data": {"path": "d"},
                          "output": {"result_dir": blank}})


# -- data.path ------------------------------------------------------------------------------------

def test_fifo_data_path_refused_without_hanging(tmp_path: Path) -> None:
    fifo = tmp_path / "prompts.jsonl"
    os.mkfifo(fifo)
    outcome: list[BaseException] = []

    def read() -> None:
        try:
            read_prompts(fifo)
        except BaseException as exc:  # noqa: BLE001 - handed to the main thread
            outcome.append(exc)

    worker = threading.Thread(target=read, daemon=True)
    worker.start()
    worker.join(10)
    if worker.is_alive():  # unblock the reader so the test process can exit
        with open(fifo, "w"):
            pass
        pytest.fail("reading a FIFO as data.path blocked")
    assert isinstance(outcome[0], ValueError) and "not a regular file" in str(outcome[0])
    folder = tmp_path / "folder" / "cat"
    folder.mkdir(parents=True)
    (folder / "one.txt").write_text("w8 w9")
    os.mkfifo(folder / "two.txt")  # a FIFO inside a data folder is skipped, not read
    assert read_prompts(tmp_path / "folder") == {"cat": ["w8 w9"]}


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_utf8_bom_is_read(suffix: str, tmp_path: Path) -> None:
    path = tmp_path / f"p{suffix}"
    body = ("text,category\nw8 w9,x\n" if suffix == ".csv"
            else json.dumps({"text": "w8 w9", "category": "x"}) + "\n")
    path.write_bytes(b"\xef\xbb\xbf" + body.encode())
    assert read_prompts(path) == {"x": ["w8 w9"]}


# -- an existing folder (issue 26 item 14) --------------------------------------------------------

def test_foreign_folder_refused_unless_forced(tiny: HookedModel, data_file: Path,
                                              tmp_path: Path) -> None:
    out = tmp_path / "mine"
    out.mkdir()
    notes = out / ".notes.0123456789ab.tmp"  # looks exactly like an mlux temp name
    notes.write_text("my notes")
    cfg = config_from_dict({"model": {"name": tiny.model_id, "activation_layers": "residuals_1"},
                            "data": {"path": str(data_file)},
                            "output": {"result_dir": str(out), "shard_size": 4}})
    with pytest.raises(ValueError, match=r"is not empty .*no mlux manifest\.json.*--force"):
        _run(cfg, tiny)
    assert sorted(p.name for p in out.iterdir()) == [notes.name]
    result = _run(cfg, tiny, force=True)
    assert notes.read_text() == "my notes"  # not an mlux temp file: never deleted
    assert result.chunks_written == 2 and (out / "manifest.json").is_file()
    _run(cfg, tiny)  # a folder holding a collection resumes without --force
    assert notes.read_text() == "my notes"


def test_only_mlux_temp_files_are_cleaned(tmp_path: Path) -> None:
    ours = tmp_path / ".manifest.json.0123456789ab.tmp"
    theirs = tmp_path / ".notes.0123456789ab.tmp"
    shard = tmp_path / "activations" / "x" / ".residuals_1.safetensors.0123456789ab.tmp"
    for p in (ours, theirs, shard):
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text("")
    removed = remove_orphans(tmp_path, ("activations",), targets=("manifest.json",))
    assert sorted(removed) == sorted([ours, shard]) and theirs.exists()


def test_cli_force_flag(tmp_path: Path, data_file: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "busy"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    model = save_tiny_model(tmp_path / "model", "llama")
    cfg = _config(tmp_path, BASE % {"model": model, "data": data_file, "out": out})
    assert cli_main(["collect", "--config", str(cfg), "--no-progress"]) == 2
    assert "--force" in capsys.readouterr().err
    assert cli_main(["collect", "--config", str(cfg), "--no-progress", "--force"]) == 0
    assert (out / "keep.txt").read_text() == "x"
    assert list((out / "activations").rglob("*.safetensors"))
