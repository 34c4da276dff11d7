"""Metric tables: mean ± std over seeds checked by hand, backbone tags and marks, md/csv/json, run-folder reading."""
import csv
import io
import json

import pytest

from evaluators import tables
from evaluators.tables import TABLES, load_results, render_table


def afhq_result(method, seed, frac, latent_fid, latent_lpips, ref_fid, ref_lpips, backbone="torchvision",
                calibrated=True, **extra):
    result = {"format": "i2i-eval", "version": 1, "task": "afhq", "run": f"runs/{method}-{seed}-{frac}",
              "method": method, "seed": seed, "data_frac": frac, "iteration": 100000, "backbone": backbone,
              "calibrated": calibrated,
              "metrics": {"latent": {"fid": latent_fid, "lpips": latent_lpips,
                                     "per_task": {"cat->dog": {"fid": 1.0, "lpips": 0.1}}},
                          "reference": {"fid": ref_fid, "lpips": ref_lpips}}}
    result.update(extra)
    return result


REMIX = [afhq_result("remix", 1, 0.1, 16.0, 0.45, 20.0, 0.43),
         afhq_result("remix", 2, 0.1, 17.0, 0.47, 21.0, 0.44),
         afhq_result("remix", 3, 0.1, 18.5, 0.46, 22.0, 0.42)]
BASELINE = [afhq_result("baseline", 1, 0.1, 30.0, 0.40, 35.0, 0.38),
            afhq_result("baseline", 1, 1.0, 16.2, 0.4501, 19.8, 0.4315)]


def markdown_rows(text: str) -> dict[str, list[str]]:
    rows = [line.strip("|").split("|") for line in text.splitlines() if line.startswith("| ")]
    return {cells[0].strip(): [c.strip() for c in cells[1:]] for cells in rows}


def test_markdown_mean_and_sample_std_by_hand():
    text = render_table(REMIX + BASELINE, "md")
    rows = markdown_rows(text)
    header = rows["method"]
    # Every cell of a column shares its backbone, so the header carries it.
    assert header[:4] == ["latent FID (10%) [tv]", "latent LPIPS (10%) [alex]", "reference FID (10%) [tv]",
                          "reference LPIPS (10%) [alex]"]
    assert header[4] == "latent FID (100%) [tv]"
    # latent FID 16, 17, 18.5: mean 17.1667; deviations -1.1667, -0.1667, 1.3333 -> sum sq 3.1667 / 2 -> std 1.2583
    # latent LPIPS .45 .47 .46: mean .46, std .01; reference FID 20 21 22: 21 ± 1; reference LPIPS .43 .44 .42: .43 ± .01
    assert rows["remix"][:4] == ["17.17 ± 1.26", "0.4600 ± 0.0100", "21.00 ± 1.00", "0.4300 ± 0.0100"]
    assert rows["remix"][4:] == ["–"] * 4  # no remix run at 100%
    assert rows["baseline"] == ["30.00", "0.4000", "35.00", "0.3800", "16.20", "0.4501", "19.80", "0.4315"]
    assert "Backbones: tv = torchvision." in text and "†" not in text and "‡" not in text


def test_proxy_and_uncalibrated_cells_are_marked_with_footnotes():
    results = REMIX + [afhq_result("wm", 1, 0.1, 40.0, 0.3, 45.0, 0.3, backbone="proxy", calibrated=False,
                                   lpips_calibrated=True),
                       afhq_result("mixup", 1, 0.1, 50.0, 0.2, 55.0, 0.2, calibrated=False, lpips_calibrated=False)]
    text = render_table(results, "md")
    rows = markdown_rows(text)
    assert rows["method"][0] == "latent FID (10%)"  # backbones differ within the column: each cell carries its own
    assert rows["wm"][:4] == ["40.00 (proxy)†", "0.3000", "45.00 (proxy)†", "0.3000"]
    assert rows["mixup"][:4] == ["50.00 (tv)‡", "0.2000‡", "55.00 (tv)‡", "0.2000‡"]
    assert rows["remix"][0] == "17.17 ± 1.26 (tv)"
    footnotes = text.split("\n\n")[-1]
    assert "† proxy backbone" in footnotes and "‡ uncalibrated" in footnotes


def test_csv_is_one_row_per_cell_with_exact_values():
    rows = list(csv.DictReader(io.StringIO(render_table(REMIX + BASELINE, "csv"))))
    assert len(rows) == 4 + 4 + 4  # remix at 10%, baseline at 10% and 100%
    latent = next(r for r in rows if r["method"] == "remix" and r["metric"] == "latent FID")
    assert float(latent["mean"]) == pytest.approx(17.1666666667)
    assert float(latent["std"]) == pytest.approx(1.2583057392)
    assert (latent["n"], latent["backbone"], latent["calibrated"], latent["data_frac"]) == ("3", "torchvision", "True", "0.1")
    single = next(r for r in rows if r["method"] == "baseline" and r["data_frac"] == "1.0" and r["metric"] == "latent LPIPS")
    assert (single["mean"], single["std"], single["backbone"]) == ("0.4501", "", "alex")


def test_json_output_and_group_by_another_field():
    tables_json = json.loads(render_table(REMIX, "json", group_by="seed"))
    assert len(tables_json) == 1 and tables_json[0]["group_by"] == "seed"
    cells = [c for c in tables_json[0]["cells"] if c["metric"] == "latent FID"]
    assert {c["seed"]: (c["mean"], c["n"], c["std"]) for c in cells} == {"1": (16.0, 1, None), "2": (17.0, 1, None),
                                                                         "3": (18.5, 1, None)}


def test_averaging_runs_scored_with_different_backbones_is_refused():
    mixed = REMIX[:2] + [afhq_result("remix", 3, 0.1, 18.5, 0.46, 22.0, 0.42, backbone="pytorch-fid")]
    with pytest.raises(ValueError, match="different networks"):
        render_table(mixed, "md")


def test_other_tasks_are_table_specs_not_code():
    cityscapes = {"format": "i2i-eval", "version": 1, "task": "cityscapes", "run": "runs/spade", "method": "remix",
                  "seed": 1, "data_frac": 0.25, "backbone": "pytorch-fid", "calibrated": True, "segmenter": "drn_d_105",
                  "metrics": {"miou": 55.5, "accuracy": 90.25, "fid": 60.0}}
    nirvis = {"format": "i2i-eval", "version": 1, "task": "nirvis", "run": "runs/nir", "method": "baseline", "seed": 1,
              "backbone": "pytorch-fid", "calibrated": True,
              "metrics": {"rank1": 98.5, "vr_far_1e-2": 97.0, "vr_far_1e-3": 90.0}}
    text = render_table([cityscapes, nirvis], "md")
    rows = markdown_rows(text)
    assert rows["remix"] == ["55.50", "90.25", "60.00"]
    assert "mIoU (25%) [drn_d_105]" in text and "FID (25%) [pf]" in text
    assert "Rank-1" in text and rows["baseline"] == ["98.50", "97.00", "90.00"]
    assert set(TABLES) == {"afhq", "nirvis", "cityscapes"}


def test_bad_results_name_the_run_or_file(tmp_path):
    with pytest.raises(ValueError, match="not an i2i-eval v1 result"):
        render_table([{"format": "other"}], "md")
    broken = dict(REMIX[0], metrics={"latent": {"fid": "n/a"}})
    with pytest.raises(ValueError, match=r"run 'runs/remix-1-0.1'.*latent.fid"):
        render_table([broken], "md")
    with pytest.raises(ValueError, match="format 'html'"):
        render_table(REMIX, "html")
    with pytest.raises(ValueError, match="no table defined for task"):
        render_table([dict(REMIX[0], task="celeba")], "md")
    with pytest.raises(ValueError, match="no field 'lr'"):
        render_table(REMIX, "md", group_by="lr")


def write_run(root, result):
    run = root / result["run"].split("/")[-1]
    (run / "eval").mkdir(parents=True)
    (run / "eval" / f"{result['task']}.json").write_text(json.dumps(result))
    (run / "eval" / "stats_cat.json").write_text(json.dumps({"not": "a result"}))
    return run


def test_load_results_from_run_folders_and_files(tmp_path):
    runs = [write_run(tmp_path, r) for r in REMIX]
    results = load_results(runs + [runs[0] / "eval" / "afhq.json"])  # the same file twice is read once
    assert sorted(r["seed"] for r in results) == [1, 2, 3]
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="empty"):
        load_results([tmp_path / "empty"])
    with pytest.raises(FileNotFoundError, match="missing.json"):
        load_results([tmp_path / "missing.json"])
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(ValueError, match="bad.json"):
        load_results([tmp_path / "bad.json"])


def test_cli_writes_csv(tmp_path, capsys):
    runs = [str(write_run(tmp_path, r)) for r in REMIX]
    out = tmp_path / "table.csv"
    assert tables.main(runs + ["--format", "csv", "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    assert printed == out.read_text()
    assert "remix,0.1,latent FID,17.1666" in printed
