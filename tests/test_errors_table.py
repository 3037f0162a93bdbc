"""docs/errors.md's table of bad inputs, run row by row: each command gives the exit status and the
line the table shows. The table is the specification; a row added there is tested here."""
import json
import logging
import re
import shlex
import shutil
import sys
from pathlib import Path

import pytest

from labfast import checkpoint, cli
from test_predict_video import write_clip

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "data" / "300w_sample"


def table_rows() -> list[tuple[str, str, int, str]]:
    text = (ROOT / "docs" / "errors.md").read_text(encoding="utf-8")
    table = text.split("<!-- bad-inputs:begin -->")[1].split("<!-- bad-inputs:end -->")[0]
    rows = []
    for line in table.strip().splitlines()[2:]:  # after the header and its rule
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        assert len(cells) == 4, f"docs/errors.md: a row needs 4 cells: {line}"
        name, command, status, seen = cells
        rows.append((name, command.strip("`"), int(status), seen.strip("`")))
    return rows


def damaged_mp4(folder: Path) -> Path:
    path = folder / "damaged.mp4"
    write_clip(path, "mp4v")
    data = bytearray(path.read_bytes())
    data[int(0.3 * len(data)):int(0.7 * len(data))] = bytes(int(0.7 * len(data)) - int(0.3 * len(data)))
    path.write_bytes(bytes(data))
    return path


def truncated_avi(folder: Path) -> Path:
    path = folder / "truncated.avi"
    write_clip(path, "MJPG")
    path.write_bytes(path.read_bytes()[:path.stat().st_size // 2])
    return path


def written(path: Path, content: bytes) -> Path:
    path.write_bytes(content)
    return path


def huge_config_checkpoint(folder: Path, tiny: Path) -> Path:
    payload = checkpoint.load(tiny)
    payload["config"] = {**payload["config"], "regressor_width": 4000}
    checkpoint.save(folder / "huge.pt", payload)
    return folder / "huge.pt"


#: Each placeholder of the table: how to make it in a fresh folder (``tiny``: the tiny checkpoint).
BUILDERS = {
    "missing": lambda folder, tiny: folder / "does_not_exist.jpg",
    "tiny": lambda folder, tiny: tiny,
    "out": lambda folder, tiny: folder / "out",
    "text_file": lambda folder, tiny: written(folder / "notes.txt", b"hello\n"),
    "photo": lambda folder, tiny: Path(shutil.copy(SAMPLE / "fullres" / "image_0067.png", folder / "photos" / "photo.png")),
    "photo_folder": lambda folder, tiny: folder / "photos",
    "broken_jpg": lambda folder, tiny: written(folder / "broken.jpg", b"\xff\xd8 this is not a JPEG"),
    "damaged_mp4": lambda folder, tiny: damaged_mp4(folder),
    "truncated_avi": lambda folder, tiny: truncated_avi(folder),
    "truncated_checkpoint": lambda folder, tiny: written(folder / "truncated.pt", tiny.read_bytes()[:5000]),
    "huge_config_checkpoint": huge_config_checkpoint,
    "latin1_boxes": lambda folder, tiny: written(folder / "boxes.json", '{"photo.png": [], "é": []}'.encode("latin-1")),
    "text_box": lambda folder, tiny: written(folder / "boxes.json", json.dumps({"photo.png": [[0, 0, 10, "x"]]}).encode()),
    "outside_box": lambda folder, tiny: written(folder / "boxes.json", json.dumps({"photo.png": [[1000, 1000, 1100, 1100]]}).encode()),
    "huge_box": lambda folder, tiny: written(folder / "boxes.json", json.dumps({"photo.png": [[0, 0, 1e9, 1e9]]}).encode()),
    "stray_key_boxes": lambda folder, tiny: written(folder / "boxes.json", json.dumps({"photo.png": [], "phota.png": [[1, 1, 9, 9]]}).encode()),
}


@pytest.mark.usefixtures("eager_runtime")
@pytest.mark.parametrize("name, command, status, seen", table_rows(), ids=[row[0] for row in table_rows()])
def test_bad_input_gives_the_documented_line(name, command, status, seen, tiny_checkpoint, tmp_path, monkeypatch, capsys, caplog):
    (tmp_path / "photos").mkdir()
    names = sorted(set(re.findall(r"\{(\w+)\}", command + seen)))
    paths = {placeholder: str(BUILDERS[placeholder](tmp_path, tiny_checkpoint)) for placeholder in names}
    arguments = shlex.split(command.format(**{key: shlex.quote(value) for key, value in paths.items()}))
    assert arguments[0] == "labfast"
    monkeypatch.setattr(sys, "argv", list(sys.argv))  # cli.main rewrites sys.argv
    monkeypatch.setenv("OPENCV_FFMPEG_LOGLEVEL", "-8")
    message = ""
    with caplog.at_level(logging.INFO):
        try:
            code = cli.main(arguments[1:])
        except SystemExit as error:  # what Python prints and exits with
            code, message = (1, str(error.code)) if isinstance(error.code, str) else (error.code, "")
    output = "\n".join([message, capsys.readouterr().err, *(record.getMessage() for record in caplog.records)])
    expected = ".*?".join(re.escape(part) for part in seen.format(**paths).split("…"))
    assert re.search(expected, output), f"{name}: expected {seen.format(**paths)!r} in:\n{output}"
    assert code == status
