"""labfast demo, the README's main job, in a reduced mode."""
import json

import cv2


from labfast import checkpoint, cli
from labfast.model import LAB, config_by_name


def test_demo_trains_briefly_and_reports_on_held_out_faces(tmp_path, capsys):
    out = tmp_path / "report"
    assert cli.main(["demo", "--train", "--minutes", "0.05", "--out", str(out), "--overlays", "2"]) == 0
    report = json.loads((out / "metrics.json").read_text())
    assert "pipeline check, not an accuracy figure" in report["note"]
    assert report["summary"]["count"] == 10 and len(report["per_face"]) == 10
    assert (out / "ced.png").is_file() and len(list((out / "overlays").glob("*.png"))) == 2
    # every evaluated face on the sheet: 10 tiles in rows of 8 under a 24 px legend band
    assert cv2.imread(str(out / "overlays.png")).shape == (24 + 2 * 256, 8 * 256, 3)
    assert "held-out" in capsys.readouterr().out


def test_demo_with_given_weights_evaluates_all_bundled_faces(tmp_path):
    weights = tmp_path / "tiny.pt"
    checkpoint.save(weights, checkpoint.model_payload(LAB("300w", config_by_name("tiny"))))
    assert cli.main(["demo", "--checkpoint", str(weights), "--out", str(tmp_path / "r"), "--overlays", "1"]) == 0
    report = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert report["summary"]["count"] == 40 and "never trained on" in report["note"]
    assert cv2.imread(str(tmp_path / "r" / "overlays.png")).shape == (24 + 5 * 256, 8 * 256, 3)  # all 40 faces
    # one unit: per-face NME in %, like the summary
    assert report["units"]["per_face"].startswith("NME, % of the inter-ocular")
    assert abs(sum(report["per_face"].values()) / 40 - report["summary"]["nme"]) < 1e-3
    assert report["from_detector"]["faces"] == 40 and report["from_detector"]["found"] >= 38
