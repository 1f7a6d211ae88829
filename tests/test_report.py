"""jaxkd.tools.report: the benchmark table from workdirs. Its numbers are checked against numpy on the metrics.jsonl the
test writes (with the engine's MetricLog) and on one real digits run; its published numbers against cells copied
by hand from the READMEs."""

import csv
import json

import numpy as np
import pytest
from PIL import Image

from configs import crd_kd_wrn, kd_wrn
from jaxkd.engine.loop import train_and_evaluate
from jaxkd.io.metric_log import MetricLog
from jaxkd.tools import report
from jaxkd.tools.published import PUBLISHED, SOURCES, published_for
from tests.helpers.runs import small_config


def write_run(workdir, config, curve, seed, steps_per_epoch=10):
    """A workdir as training leaves it: config.json (the config's own JSON) and metrics.jsonl with train rows and
    one eval row per epoch of `curve` (the test top-1s), written by the engine's MetricLog."""
    config.seed = seed
    workdir.mkdir(parents=True)
    (workdir / "config.json").write_text(config.to_json_best_effort(indent=2, sort_keys=True))
    log = MetricLog(workdir)
    log.write(0, "teacher", {"top1": 75.0, "top5": 93.0})
    best = 0.0
    for epoch, top1 in enumerate(curve, start=1):
        step = epoch * steps_per_epoch
        log.write(step, "train", {"loss": 1.0 / epoch, "accuracy": top1 + 5, "lr": 0.05})
        best = max(best, top1)
        log.write(step, "eval", {"epoch": epoch, "top1": top1, "top5": top1 + 20, "best_top1": best})
    log.close()
    return workdir


def kd_config(**changes):
    config = kd_wrn.get_config()
    config.epochs = 4
    for key, value in changes.items():
        section, _, name = key.rpartition(".")
        setattr(config[section] if section else config, name, value)
    return config


@pytest.fixture
def table_runs(tmp_path):
    """Two groups (KD and CRD+KD, WRN40-2 -> WRN16-2, 3 and 2 seeds, each run's teacher at its own path), a KD run
    with another lr, an unfinished KD run; their curves, by group."""
    rng = np.random.default_rng(0)
    curves = {"kd": [], "crd+kd": []}
    workdirs = []
    for seed in range(3):
        curve = list(rng.uniform(60, 75, 4))
        curves["kd"].append(curve)
        workdirs.append(write_run(tmp_path / f"kd_{seed}", kd_config(**{"teacher.checkpoint": f"/t/{seed}.pth"}),
                                  curve, seed))
    for seed in range(2):
        config = crd_kd_wrn.get_config()
        config.epochs = 4
        curve = list(rng.uniform(60, 75, 4))
        curves["crd+kd"].append(curve)
        workdirs.append(write_run(tmp_path / f"crdkd_{seed}", config, curve, seed))
    workdirs.append(write_run(tmp_path / "kd_lr", kd_config(**{"optimizer.lr": 0.02}), [50.0] * 4, 7))
    workdirs.append(write_run(tmp_path / "kd_unfinished", kd_config(), [40.0, 41.0], 8))
    return workdirs, curves


def test_table_equals_numpy_on_metrics_and_names_what_it_leaves_out(tmp_path, table_runs, capsys):
    workdirs, curves = table_runs
    out = {name: tmp_path / f"table.{name}" for name in ("md", "csv", "json", "png")}
    assert report.main([*map(str, workdirs), "--out", str(out["md"]), "--csv", str(out["csv"]),
                        "--json", str(out["json"]), "--plot", str(out["png"])]) == 0
    printed = capsys.readouterr().out
    result = json.loads(out["json"].read_text())
    rows = {row["method"]: row for row in result["rows"]}
    assert set(rows) == {"kd", "crd+kd"}
    for method, group in curves.items():
        last = np.array([curve[-1] for curve in group])
        best = np.array([max(curve) for curve in group])
        row = rows[method]
        assert (row["teacher"], row["student"], row["runs"]) == ("wideresnet40_2", "wideresnet16_2", len(group))
        assert row["last_top1"]["mean"] == pytest.approx(last.mean(), abs=1e-12)
        assert row["last_top1"]["std"] == pytest.approx(last.std(ddof=1), abs=1e-12)
        assert row["best_top1"]["mean"] == pytest.approx(best.mean(), abs=1e-12)
        assert row["best_top1"]["std"] == pytest.approx(best.std(ddof=1), abs=1e-12)
        assert [m["last_top1"] for m in row["members"]] == pytest.approx(list(last))
        assert f"{last.mean():.2f} ± {last.std(ddof=1):.2f}" in printed
    # RepDistiller's KD number is for 240 epochs: not beside these 4-epoch runs (its CRD+KD has none at all)
    assert rows["kd"]["published"] == [] and rows["crd+kd"]["published"] == []
    assert rows["kd"]["published_elsewhere"] == [{"top1": 74.92, "source": "RepDistiller README",
                                                  "recipe": "CIFAR-100, 240 epochs, batch 64"}]
    assert (rows["kd"]["data"], rows["kd"]["epochs"]) == ("CIFAR-100", 4)
    assert rows["kd"]["teacher_checkpoints"] == ["/t/0.pth", "/t/1.pth", "/t/2.pth"]  # ignored, but listed
    left_out = {entry["workdir"]: entry["reason"] for entry in result["left_out"]}
    assert set(left_out) == {str(workdirs[-2]), str(workdirs[-1])}
    assert "differs" in left_out[str(workdirs[-2])] and left_out[str(workdirs[-2])].endswith("in: optimizer.lr")
    assert left_out[str(workdirs[-1])] == "unfinished: last evaluation at epoch 2 of 4"
    for workdir in workdirs[-2:]:
        assert str(workdir) in printed
    assert out["md"].read_text() == printed[:printed.index("wrote ")]
    with open(out["csv"]) as file:
        by_method = {line["method"]: line for line in csv.DictReader(file)}
    assert float(by_method["kd"]["last_top1_mean"]) == rows["kd"]["last_top1"]["mean"]
    assert float(by_method["crd+kd"]["best_top1_std"]) == rows["crd+kd"]["best_top1"]["std"]
    with Image.open(out["png"]) as image:
        assert image.format == "PNG" and image.size == report.plot_size(2) == (800, 300)


def test_robustness_columns_from_results_json(tmp_path, table_runs):
    workdirs, _ = table_runs
    kd = workdirs[:3]
    records = [{"checkpoint": str(w), "clean": {"top1": 70.0 + i}, "cifar100c": {"top1": 40.0 + 2 * i}}
               for i, w in enumerate(kd)]
    # two runs as jaxkd.tools.robustness --json writes them (rows, each with the model/ it loaded), one as
    # jaxkd.tools.evaluate --out writes it (one record, the checkpoint as given)
    robustness, evaluate = tmp_path / "robustness.json", tmp_path / "evaluate.json"
    robustness.write_text(json.dumps({"rows": [{"checkpoint": "as typed elsewhere", "loaded": str(w / "model"),
                                                "results": r} for w, r in zip(kd[:2], records)]}))
    evaluate.write_text(json.dumps(records[2]))
    found = report.robustness_by_workdir([str(robustness), str(evaluate)])
    table = report.build_report([report.load_run(str(w)) for w in kd], found)
    row = table["rows"][0]
    assert row["cifar100"]["n"] == 3 and row["cifar100"]["mean"] == pytest.approx(71.0)
    assert row["cifar100c"]["mean"] == pytest.approx(42.0) and row["cifar100c"]["std"] == pytest.approx(2.0)
    assert "| 71.00 ± 1.00 | 42.00 ± 2.00 |" in report.format_markdown(table)


def test_a_repeated_seed_is_named_not_counted_twice(tmp_path):
    first = write_run(tmp_path / "a", kd_config(), [60.0, 61.0, 62.0, 63.0], seed=0)
    again = write_run(tmp_path / "b", kd_config(), [60.0, 61.0, 62.0, 63.0], seed=0)
    table = report.build_report([report.load_run(str(first)), report.load_run(str(again))], {})
    assert table["rows"][0]["runs"] == 1
    assert table["left_out"] == [{"workdir": str(again), "reason": f"same config and seed (0) as {first}"}]


@pytest.mark.parametrize("problem", ["not_a_directory", "no_config", "existing_out"])
def test_bad_input_is_one_error_line_and_writes_nothing(tmp_path, table_runs, capsys, problem):
    workdirs, _ = table_runs
    args = [str(w) for w in workdirs[:2]]
    out, csv_out = tmp_path / "out.md", tmp_path / "out.csv"
    if problem == "not_a_directory":
        args.append(str(tmp_path / "missing"))
    elif problem == "no_config":
        (tmp_path / "empty").mkdir()
        args.append(str(tmp_path / "empty"))
    else:
        out.write_text("keep")
    assert report.main([*args, "--out", str(out), "--csv", str(csv_out)]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and len(captured.err.strip().splitlines()) == 1
    assert captured.err.startswith("error: ")
    assert not csv_out.exists() and (out.read_text() == "keep" if problem == "existing_out" else not out.exists())


def test_published_numbers_match_the_readmes():
    # RepDistiller README.md, table 1 line "| KD | 74.92 | 73.54 | 70.66 | 70.67 | 73.08 | 73.33 | 72.98 |"
    # (header: wrn-40-2/wrn-16-2, wrn-40-2/wrn-40-1, resnet56/resnet20, resnet110/resnet20, resnet110/resnet32, ...)
    assert [p.top1 for p in published_for("wideresnet40_2", "wideresnet16_2", "kd", False)] == [74.92]
    assert [p.top1 for p in published_for("rd_resnet110", "rd_resnet32", "kd", False)] == [73.08]
    # table 1 line "| **CRD** | **75.48** | **74.14** | **71.16** | **71.46** | **73.48** | **75.51** | **73.94** |"
    assert [p.top1 for p in published_for("rd_resnet32x4", "rd_resnet8x4", "crd", False)] == [75.51]
    # table 1 line "| FSP | 72.91 | N/A | 69.95 | ..." : no number for wrn-40-2 -> wrn-40-1
    assert published_for("wideresnet40_2", "wideresnet40_1", "fsp", False) == []
    # table 1 line "| Teacher <br> Student |    75.61 <br> 73.26    | ..."
    assert 73.26 in [p.top1 for p in published_for(None, "wideresnet16_2", "none", False)]
    # table 2 line "| AT | 59.40 | 58.58 | 71.84 | 71.73 | 72.73 | 73.32 |" (vgg13/MobileNetV2 first, wrn-40-2/
    # ShuffleNetV1 last)
    assert [p.top1 for p in published_for("vgg13", "MobileNetV2", "at", False)] == [59.40]
    assert [p.top1 for p in published_for("wideresnet40_2", "ShuffleV1", "at", False)] == [73.32]
    # table 2 line "| **CRD** | **69.73** | **69.11** | **74.30** | **75.11** | **75.65** | **76.05** |"
    assert [p.top1 for p in published_for("ResNet50", "vgg8", "crd", False)] == [74.30]
    # pytorch-kd README, Baseline Models: "| Baseline            |  72.55   |  69.51   |  61.11  |" (ResNet56, 20, 8)
    assert [(p.top1, p.source) for p in published_for(None, "resnet20", "none", False)] == [(69.51,
                                                                                           "pytorch-kd README")]
    # pytorch-kd README, Results on CIFAR100C: "| SaliencyMix         |  78.26   |  49.06    |"
    assert [(p.top1, p.cifar100c) for p in published_for(None, "wideresnet40_2", "none", True)] == [(78.26, 49.06)]
    # mdistiller README, DKD: "| **DKD** | **71.97** | **74.11** | **76.32** | **76.23** | **74.81** | **74.68** |"
    assert [(p.top1, p.scoring) for p in published_for("rd_resnet32x4", "rd_resnet8x4", "dkd", False)] == [(76.32,
                                                                                                         "best")]
    assert SOURCES["RepDistiller README"].scoring == "last"


def test_published_dist_and_logit_standardization_numbers_match_the_readmes():
    # DIST README, CIFAR-100: "|ResNet-8x4 (72.50)|ResNet-32x4 (79.42)|76.31±0.19|`cifar_resnet8x4`|..." and
    # "|ShuffleNetV2 (71.82)|ResNet-32x4 (79.42)|77.35±0.25|`cifar_ShuffleV2`|..."
    assert [(p.top1, p.std, p.scoring) for p in published_for("rd_resnet32x4", "rd_resnet8x4", "dist", False)] == [
        (76.31, 0.19, "best")]
    assert [(p.top1, p.std) for p in published_for("rd_resnet32x4", "ShuffleV2", "dist", False)] == [(77.35, 0.25)]
    # "|MobileNetV2 (64.60)|ResNet-50 (79.34)|68.66±0.23|`cifar_mobile_half`|`cifar_ResNet50`|..."
    assert [p.top1 for p in published_for("ResNet50", "MobileNetV2", "dist", False)] == [68.66]
    assert published_for("wideresnet40_2", "wideresnet16_2", "dist", False) == []  # not in its table
    # logit-standardization-KD README, table 1 (header ResNet32x4/ResNet8x4, VGG13/VGG8, Wrn_40_2/Wrn_40_1,
    # Wrn_40_2/Wrn_16_2, ResNet56/ResNet20, ResNet110/ResNet32, ResNet110/ResNet20):
    # "| KD+**Ours** | [76.62](...) | [74.36](...) | ... | [71.48](<logs/KD/kd,resnet110,resnet20,4,12.txt>) |"
    source = "logit-standardization-KD README"
    assert [(p.top1, p.source) for p in published_for("rd_resnet32x4", "rd_resnet8x4", "kd+ls", False)] == [
        (76.62, source)]
    assert [p.top1 for p in published_for("rd_resnet110", "rd_resnet20", "kd+ls", False)] == [71.48]
    # "| DKD+**Ours** | [77.01](...) | [74.81](...) | [74.89](...) | [76.39](...) | [72.32](...) | ..."
    assert [p.top1 for p in published_for("wideresnet40_2", "wideresnet16_2", "dkd+ls", False)] == [76.39]
    # "| DKD | 76.32 | 74.68 | 74.81 | 76.24 | 71.97 | 74.11 | 71.06 |": 76.24 beside mdistiller's 76.23, 76.32 once
    assert [(p.top1, p.source) for p in published_for("wideresnet40_2", "wideresnet16_2", "dkd", False)] == [
        (76.23, "mdistiller README"), (76.24, source)]
    assert [p.source for p in published_for("rd_resnet32x4", "rd_resnet8x4", "dkd", False)] == ["mdistiller README"]
    assert [p.top1 for p in published_for("rd_resnet110", "rd_resnet20", "dkd", False)] == [71.06]
    # table 2 (ResNet32x4/SHN-V2, ResNet32x4/Wrn_16_2, ResNet32x4/Wrn_40_2, Wrn_40_2/ResNet8x4, Wrn_40_2/MN-V2,
    # VGG13/MN-V2, ResNet50/MN-V2): "| KD+**Ours** | [75.56](...) | ... | [69.02](<logs/KD/kd,ResNet50,...>) |"
    assert [p.top1 for p in published_for("rd_resnet32x4", "ShuffleV2", "kd+ls", False)] == [75.56]
    assert [p.top1 for p in published_for("ResNet50", "MobileNetV2", "kd+ls", False)] == [69.02]
    # "| DKD+**Ours** | [77.37](...) | [76.19](...) | [78.95](...) | [76.75](...) | [70.01](...) | ..."
    assert [p.top1 for p in published_for("wideresnet40_2", "rd_resnet8x4", "dkd+ls", False)] == [76.75]
    # "| KD | 74.45 | 74.90 | 77.70 | 73.97 | ...": RepDistiller's 74.45 listed once, the pair it lacks from here
    assert [p.source for p in published_for("rd_resnet32x4", "ShuffleV2", "kd", False)] == ["RepDistiller README"]
    assert [p.top1 for p in published_for("rd_resnet32x4", "wideresnet16_2", "kd", False)] == [74.90]
    assert SOURCES[source].scoring == SOURCES["DIST README"].scoring == "best"


def test_published_wttm_numbers_match_the_ttm_readme():
    # zkxufo/TTM README, table 1: "|**WTTM**|76.37|74.58|71.92|71.67|74.13|76.06|74.44|" (wrn-40-2 -> wrn-16-2 ...
    # vgg13 -> vgg8, RepDistiller's order); table 2: "|**WTTM**|69.16|69.59|74.82|74.37|76.55|75.42|"
    assert [(p.top1, p.source, p.scoring) for p in published_for("wideresnet40_2", "wideresnet16_2", "wttm",
                                                                 False)] == [(76.37, "TTM README", "best")]
    assert [p.top1 for p in published_for("rd_resnet32x4", "rd_resnet8x4", "wttm", False)] == [76.06]
    assert [p.top1 for p in published_for("vgg13", "vgg8", "wttm", False)] == [74.44]
    assert [p.top1 for p in published_for("vgg13", "MobileNetV2", "wttm", False)] == [69.16]
    assert [p.top1 for p in published_for("wideresnet40_2", "ShuffleV1", "wttm", False)] == [75.42]
    assert [p.method for p in PUBLISHED if p.source == "TTM README"] == ["wttm"] * 13
    assert not [p for p in PUBLISHED if p.method == "nkd"]  # cls_KD publishes no CIFAR-100 table


def test_published_imagenet_numbers_match_the_readmes_and_torchdistills_table():
    r34_r18, r50_mv1 = ("tv_resnet34", "tv_resnet18"), ("tv_resnet50", "MobileNetV1")

    def cells(pair, method):
        return [(p.top1, p.source) for p in published_for(*pair, method, False)]

    mdistiller, dist, torchdistill = "mdistiller README (ImageNet)", "DIST README (ImageNet)", "torchdistill benchmarks"
    original = "torchdistill benchmarks (original work)"
    # mdistiller README, 'On ImageNet' (header ResNet34/ResNet18, ResNet50/MobileNet-V1): "| KD | 71.03 | 70.50 |",
    # "| **KD+DOT** | **71.72** | **73.09** |", "| **DKD** | **71.70** | **72.05** |"
    # torchdistill docs/source/_static/benchmarks/imagenet-resnet18_kd.tsv (Method, Original work, torchdistill):
    # "KD  \tN/A  \t71.37", "CRD  \t71.17\t70.93", "KR  \t71.61\t71.64", "DIST  \t72.07\t71.95",
    # "KD w/ LS  \t71.42\t71.23", "AT  \t70.70\t70.90"
    # DIST README, ImageNet 'Baseline settings': "|ResNet-18 (69.76)|ResNet-34 (73.31)|72.07|...",
    # "|MobileNet V1 (70.13)|ResNet-50 (76.16)|73.24|..."; 'Stronger teachers': "|ResNet-18 (69.76)|ResNet-34
    # (73.31)|71.21|72.07|", "|ResNet-34 (73.31)|ResNet-152 (78.31)|74.87|75.42|"
    assert cells(r34_r18, "kd") == [(71.03, mdistiller), (71.21, dist), (71.37, torchdistill)]
    assert cells(r50_mv1, "kd") == [(70.50, mdistiller)]
    assert cells(r34_r18, "kd+dot") == [(71.72, mdistiller)] and cells(r50_mv1, "kd+dot") == [(73.09, mdistiller)]
    assert cells(r34_r18, "dkd") == [(71.70, mdistiller)] and cells(r50_mv1, "dkd") == [(72.05, mdistiller)]
    assert cells(r34_r18, "dist") == [(72.07, dist), (71.95, torchdistill)]  # 72.07 once: README twice, tsv once
    assert cells(r50_mv1, "dist") == [(73.24, dist)]
    assert cells(("tv_resnet152", "tv_resnet34"), "dist") == [(75.42, dist)]
    assert cells(("tv_resnet152", "tv_resnet34"), "kd") == [(74.87, dist)]
    assert cells(r34_r18, "crd") == [(70.93, torchdistill), (71.17, original)]
    assert cells(r34_r18, "reviewkd") == [(71.64, torchdistill), (71.61, original)]
    assert cells(r34_r18, "kd+ls") == [(71.23, torchdistill), (71.42, original)]
    assert cells(r34_r18, "at") == [(70.90, torchdistill), (70.70, original)]
    assert cells(r34_r18, "ft") == [(71.56, torchdistill)]  # its original number is ILSVRC 2015's (footnote **)
    imagenet_sources = {name for name, source in SOURCES.items() if source.data == "ImageNet"}
    assert imagenet_sources == {mdistiller, dist, torchdistill, original}
    assert {SOURCES[name].scoring for name in imagenet_sources} == {"best"}
    # the ImageNet sources' numbers are all of ImageNet architectures, the CIFAR-100 ones' of none
    imagenet_archs = {"tv_resnet18", "tv_resnet34", "tv_resnet50", "tv_resnet101", "tv_resnet152", "MobileNetV1"}
    for p in PUBLISHED:
        assert (p.source in imagenet_sources) == (p.student in imagenet_archs), p


def imagenet_run(tmp_path, name, arguments, source=None):
    """A finished 100-epoch run of configs/imagenet.py:ARGUMENTS (TFDS's imagenet2012 through the streaming path),
    or with another data `source`."""
    from configs import imagenet

    config = imagenet.get_config(arguments)
    if source is not None:
        config.data.source = source
    return report.load_run(str(write_run(tmp_path / name, config, list(np.linspace(10.0, 71.0, config.epochs)), 0)))


def test_the_imagenet_published_column_stands_beside_imagenet_runs_only(tmp_path):
    """DKD on R34 -> R18: mdistiller's 71.70 beside the ImageNet run; the same run on CIFAR-100 data names it
    under the table. CRD (batch 256): torchdistill's re-run (any batch) and its original work's number."""
    built = report.build_report([imagenet_run(tmp_path, "dkd", "tv_resnet34,tv_resnet18,dkd"),
                                 imagenet_run(tmp_path, "crd", "tv_resnet34,tv_resnet18,crd")], {})
    dkd, crd = built["rows"]
    (cifar,) = report.build_report([imagenet_run(tmp_path, "cifar", "tv_resnet34,tv_resnet18,dkd", "tfds")], {})["rows"]
    assert (dkd["data"], dkd["teacher"], dkd["student"], dkd["method"]) == ("ImageNet", "tv_resnet34", "tv_resnet18",
                                                                           "dkd")
    assert [(p["top1"], p["scoring"]) for p in dkd["published"]] == [(71.70, "best")]
    assert [(p["top1"], p["source"]) for p in crd["published"]] == [
        (70.93, "torchdistill benchmarks"), (71.17, "torchdistill benchmarks (original work)")]
    assert cifar["data"] == "CIFAR-100" and cifar["published"] == []
    assert [p["top1"] for p in cifar["published_elsewhere"]] == [71.70]
    table = report.format_markdown(built)
    assert "| ImageNet | 100 | batch 512, lr 0.2 (0.2 per 512), x0.1 at 30,60,90 | 1 | 71.00 | 71.00 | 71.70 (best; " \
           "mdistiller README (ImageNet)) |" in table
    assert crd["recipe"] == "batch 256, lr 0.1 (0.2 per 512), x0.1 at 30,60,90"  # the lr it trained with
    assert "71.70" not in report.format_markdown({**built, "rows": [cifar]}).split("\n\n")[0]  # not in its row
    assert "mdistiller README (ImageNet)'s 71.70, published for ImageNet, 100 epochs, batch 512." in \
        report.format_markdown({**built, "rows": [cifar]})


@pytest.mark.parametrize("method,label,top1", [("dist", "dist", 76.31), ("kd_ls", "kd+ls", 76.62),
                                               ("dkd_ls", "dkd+ls", 77.01), ("wttm", "wttm", 76.06),
                                               ("kd_dot", "kd+dot", 75.12)])
def test_a_report_group_of_an_mdistiller_method_shows_its_published_number(tmp_path, method, label, top1):
    """A finished run of configs/mdistiller.py:resnet32x4,resnet8x4,M: its group's label and published number."""
    from configs import mdistiller

    config = mdistiller.get_config(f"resnet32x4,resnet8x4,{method}")  # 240 epochs, as published
    workdir = write_run(tmp_path / method, config, list(np.linspace(40.0, 61.0, config.epochs)), 0)
    (row,) = report.build_report([report.load_run(str(workdir))], {})["rows"]
    assert (row["teacher"], row["student"], row["method"]) == ("rd_resnet32x4", "rd_resnet8x4", label)
    assert [p["top1"] for p in row["published"]] == [top1]


def test_published_numbers_stand_only_beside_runs_of_the_data_and_recipe_they_were_published_for(tmp_path):
    """The seed's resnet20 (69.51, CIFAR-100, 240 epochs, batch 64): beside a run of configs/baseline.py, not beside
    the demo's 12-epoch digits teacher (it was shown as "96.43 | 69.51 (last, 1 run; pytorch-kd README)"), which
    names it under the table; every row says its data, epochs and recipe."""
    from configs import baseline, demo

    cifar = baseline.get_config()
    cifar.model = "resnet20"
    digits = demo.get_config("teacher")
    reports = {}
    for name, config in (("cifar", cifar), ("digits", digits)):
        workdir = write_run(tmp_path / name, config, list(np.linspace(30.0, 96.0, config.epochs)), 0)
        reports[name] = report.build_report([report.load_run(str(workdir))], {})
    (cifar_row,), (digits_row,) = reports["cifar"]["rows"], reports["digits"]["rows"]
    assert (cifar_row["data"], cifar_row["epochs"], digits_row["data"], digits_row["epochs"]) == (
        "CIFAR-100", 240, "digits", 12)
    assert [p["top1"] for p in cifar_row["published"]] == [69.51] and cifar_row["published_elsewhere"] == []
    assert digits_row["published"] == [] and [p["top1"] for p in digits_row["published_elsewhere"]] == [69.51]
    cifar_table, digits_table = (report.format_markdown(reports[name]) for name in ("cifar", "digits"))
    assert "| - | ResNet20 | Baseline | no | CIFAR-100 | 240 | batch 64, lr 0.05, x0.1 at 150,180,210 | 1 | 96.00 | 96.00 |" \
           " 69.51 (last, 1 run; pytorch-kd README) |" in cifar_table
    assert "| digits | 12 | batch 64, lr 0.05, x0.1 at 8,10 | 1 | 96.00 | 96.00 | - |" in digits_table
    assert "pytorch-kd README's 69.51, published for CIFAR-100, 240 epochs, batch 64." in digits_table
    assert "69.51 (last" not in digits_table


def test_report_reads_a_real_training_run(tmp_path):
    """One real 1-epoch resnet8 run on digits: the report's last and best are what training returned."""
    workdir = tmp_path / "run"
    trained = train_and_evaluate(small_config(epochs=1), workdir)
    table = report.build_report([report.load_run(str(workdir))], {})
    (row,) = table["rows"]
    assert table["left_out"] == [] and (row["teacher"], row["student"], row["method"]) == (None, "resnet8", "none")
    assert row["last_top1"] == {"n": 1, "mean": pytest.approx(trained["last_top1"]), "std": None}
    assert row["best_top1"]["mean"] == pytest.approx(trained["best_top1"])
