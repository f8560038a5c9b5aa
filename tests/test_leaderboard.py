import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from embench.board_html import render_html
from embench.cli import main
from embench.leaderboard import (
    best_reconstructions,
    decoder_mode,
    group_records,
    load_records,
    mean_ci,
    render_markdown,
    render_reconstruction_table,
)
from embench.results import SCHEMA_VERSION, load_record
from embench.storage import CODE_VERSION, fingerprint

GOLDEN = Path(__file__).parent / "golden" / "leaderboard.md"


def make_record(encoder, z, seed, mlp, linear, baseline=33.0, preset="quick", task="lunarlander",
                version=CODE_VERSION, l1_after=None, l1_before=None, decoder_init="finetune",
                decoder_epochs=15):
    """A valid record; with ``l1_after`` it carries reconstruction results (Table VIII).

    ``decoder_init`` may be "finetune", "reinitialize", a bool (an older record that only has
    ``retraining.reinitialized``) or None (neither key).
    """
    config = {"z_dim": z, "seed": seed}
    spec = f"embench.encoders.x:{encoder}"
    data = f"data-{task}-{preset}"
    train = fingerprint("train", spec, config, data, version=version)
    protocol = {"task": task, "data": data, "preset": {"probe_epochs": 300 if preset == "quick"
                                                       else 500}}
    protocol["fingerprint"] = fingerprint("protocol", protocol, version=version)
    record = {
        "schema_version": SCHEMA_VERSION, "embench_version": version,
        "encoder": encoder, "encoder_spec": spec, "task": task, "preset": preset,
        "z_dim": z, "seed": seed, "device": "cpu", "encoder_config": config,
        "fingerprints": {"run": fingerprint("run", train, seed), "train": train,
                         "encoder": f"enc-{encoder}-{z}-{seed}", "data": data,
                         "embeddings": f"emb-{encoder}-{z}-{seed}"},
        "split_sizes": {"probe_train": 100, "test": 30},
        "metric": {"name": "error_px", "direction": "lower"}, "protocol": protocol,
        "probes": {}, "test": {"mlp": mlp, "linear": linear, "baseline": baseline},
        "timings": {}, "versions": {}, "created": "2026-11-25T12:00:00+00:00",
    }
    if l1_after is not None:
        retraining = {"n_epochs": decoder_epochs, "best_epoch": decoder_epochs - 1}
        recon = {"test_l1_before": 2 * l1_after if l1_before is None else l1_before,
                 "test_l1_after": l1_after, "decoder_epochs": decoder_epochs,
                 "retraining": retraining,
                 "grid_rows": ["original", "before retraining", "after retraining"],
                 "grid": f"{encoder}-z{z}-seed{seed}-{preset}.png"}
        if isinstance(decoder_init, str):
            recon["decoder_init"] = decoder_init
            retraining["reinitialized"] = decoder_init == "reinitialize"
        elif isinstance(decoder_init, bool):
            retraining["reinitialized"] = decoder_init
        record["reconstruction"] = recon
    return record


def fixed_records():
    # One pinned version: the golden file must not change with every version bump.
    def record(*args):
        return make_record(*args, version="embench-0.2.0")

    return [
        record("ae", 32, 0, 13.0, 14.0), record("ae", 64, 0, 12.5, 13.5),
        record("p_vae", 32, 0, 2.0, 7.0), record("p_vae", 32, 1, 2.4, 7.2),
        record("p_vae", 64, 0, 1.5, 6.0), record("pca", 32, 0, 9.0, 10.0),
    ]


def test_markdown_matches_golden_file():
    text = render_markdown(fixed_records(), plots={"lunarlander": "lunarlander.png"})
    assert text == GOLDEN.read_text()


def test_golden_content_makes_sense():
    text = GOLDEN.read_text()
    assert "| z size | AE | P. VAE | PCA |" in text
    assert "**1.50** (paper 1.15)" in text      # best cell of the z=64 row, with the paper's value
    assert "2.20 ± 2.54" in text                 # two seeds -> mean ± 95% CI
    assert "trivial baseline | 33.00" in text
    assert "2 seed(s)" in text
    assert "| **Any** | 12.50 (paper 13.22) | **1.50** (paper 1.15) | 9.00 |" in text


def test_mean_ci_uses_student_t():
    mean, ci = mean_ci([1.0, 3.0])
    assert mean == 2.0 and ci == pytest.approx(12.706 * 1.0)
    assert mean_ci([5.0]) == (5.0, None)


def _write(directory, records):
    directory.mkdir(parents=True, exist_ok=True)
    for i, record in enumerate(records):
        (directory / f"r{i}.json").write_text(json.dumps(record))


def test_merging_overlapping_directories_counts_each_run_once(tmp_path):
    records = fixed_records()
    _write(tmp_path / "a", records[:4])
    _write(tmp_path / "b", records[2:])
    loaded = load_records([tmp_path / "a", tmp_path / "b"])
    assert len(loaded.records) == len(records) and loaded.duplicates == 2
    assert not loaded.problems


def _bad_records():
    good = make_record("ae", 32, 0, 13.0, 14.0)
    missing = dict(good)
    del missing["test"]
    partial = json.loads(json.dumps(good))
    del partial["test"]["linear"]
    edited = json.loads(json.dumps(good))
    edited["encoder_config"]["z_dim"] = 99
    edited["z_dim"] = 99
    mismatch = json.loads(json.dumps(good))
    mismatch["z_dim"] = 64
    proto = json.loads(json.dumps(good))
    proto["protocol"]["task"] = "other"
    wrong_type = json.loads(json.dumps(good))
    wrong_type["seed"] = "zero"
    future = json.loads(json.dumps(good))
    future["schema_version"] = 99
    return {
        "missing field": (missing, "missing field 'test'"),
        "partial": (partial, "test.linear"),
        "edited config": (edited, "fingerprints.train does not match"),
        "z mismatch": (mismatch, "disagrees with encoder_config"),
        "protocol": (proto, "protocol fingerprint does not match"),
        "type": (wrong_type, "field 'seed' should be int"),
        "schema": (future, "schema_version 99"),
    }


@pytest.mark.parametrize("case", list(_bad_records()))
def test_check_refuses_each_kind_of_bad_record(tmp_path, case):
    record, reason = _bad_records()[case]
    _write(tmp_path / "r", [record])
    result = CliRunner().invoke(main, ["leaderboard", "--check", str(tmp_path / "r")])
    assert result.exit_code == 1
    assert reason in result.output and "r0.json" in result.output
    assert "Traceback" not in result.output


def test_records_of_another_version_are_checked_with_their_own_fingerprints(tmp_path):
    """A board published by an older embench stays valid under a newer one (the code version
    is part of every fingerprint), and its records are still checked."""
    older = [make_record("ae", 64, 0, 13.0, 14.0, version="embench-0.0.9"),
             make_record("p_ae", 64, 0, 3.0, 6.0, version="embench-0.0.9")]
    _write(tmp_path / "r", older)
    result = CliRunner().invoke(main, ["leaderboard", "--check", str(tmp_path / "r")])
    assert result.exit_code == 0, result.output
    assert "2 valid record(s)" in result.output
    assert "embench-0.0.9" in render_markdown(older)
    edited = json.loads(json.dumps(older[0]))
    edited["encoder_config"]["seed"] = 7
    _write(tmp_path / "s", [edited])
    result = CliRunner().invoke(main, ["leaderboard", "--check", str(tmp_path / "s")])
    assert result.exit_code == 1 and "fingerprints.train does not match" in result.output


def test_check_refuses_invalid_json(tmp_path):
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "bad.json").write_text("{not json")
    result = CliRunner().invoke(main, ["leaderboard", "--check", str(tmp_path / "r")])
    assert result.exit_code == 1 and "bad.json: not valid JSON" in result.output


def test_different_protocols_are_grouped_not_ranked(tmp_path):
    records = fixed_records() + [make_record("ae", 32, 0, 11.0, 12.0, preset="paper")]
    text = render_markdown(records)
    assert "2 protocols were found" in text
    assert text.count("| z size |") == 4  # MLP + linear per protocol


def test_leaderboard_command_writes_board_and_plot(tmp_path):
    _write(tmp_path / "r", fixed_records())
    result = CliRunner().invoke(main, ["leaderboard", str(tmp_path / "r"), "--out",
                                       str(tmp_path / "board")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "board" / "README.md").read_text().startswith("# embench leaderboard")
    assert (tmp_path / "board" / "lunarlander.png").read_bytes()[:4] == b"\x89PNG"


def test_an_older_record_of_the_same_cell_is_superseded_not_averaged():
    old = make_record("ae", 32, 0, 20.0, 21.0)
    new = make_record("ae", 32, 0, 13.0, 14.0)
    new["fingerprints"]["run"] = "another-run-of-the-same-cell"
    new["created"] = "2026-11-26T12:00:00+00:00"
    text = render_markdown([old, new])
    assert "| 32 | **13.00** (paper 13.44) |" in text and "20.00" not in text
    assert "1 seed(s) (0) · 1 run(s) (1 older record(s) of the same cells superseded)" in text


def test_a_bf16_or_gpu_record_never_supersedes_or_averages_with_cpu_fp32():
    """The same cell, protocol and seed in fp32 on a CPU, bf16 on a CPU, fp32 on cuda:1."""
    fp32 = make_record("ae", 32, 0, 13.0, 14.0)
    bf16 = {**make_record("ae", 32, 0, 20.0, 21.0), "precision": "bf16",
            "created": "2026-11-26T12:00:00+00:00"}  # newer: would have won the cell before
    bf16["fingerprints"] = {**bf16["fingerprints"], "run": "a-bf16-run-of-the-same-cell"}
    gpu = {**make_record("ae", 32, 0, 30.0, 31.0), "device": "cuda:1"}
    gpu["fingerprints"] = {**gpu["fingerprints"], "run": "a-gpu-run-of-the-same-cell"}
    groups = group_records([fp32, bf16, gpu])
    assert [(g.device, g.precision, len(g.records), g.superseded) for g in groups] == [
        ("cpu", "bf16", 1, 0), ("cpu", "fp32", 1, 0), ("cuda", "fp32", 1, 0)]
    assert groups[0].protocol == groups[1].protocol == groups[2].protocol
    text = render_markdown([fp32, bf16, gpu])
    assert "| 32 | **13.00** (paper 13.44) |" in text  # fp32 keeps its own cell
    assert "| 32 | **20.00** (paper 13.44) |" in text and "| 32 | **30.00**" in text
    assert "superseded" not in text and "3 protocols were found" in text
    assert "device cpu · precision bf16" in text and "device cuda:1 · precision fp32" in text


def test_the_protocol_with_the_most_data_leads_its_task():
    """The board's scale first, whatever the protocol ids sort as; each task on its own."""
    small = [make_record("ae", 32, 0, 13.0, 14.0, preset="quick"),
             make_record("ae", 32, 0, 10.0, 11.0, preset="quick", task="other")]
    big = []
    for preset in ("paper", "third"):
        record = make_record("ae", 32, 0, 9.0, 10.0, preset=preset)
        record["split_sizes"] = {"probe_train": 1000 if preset == "paper" else 500, "test": 300}
        big.append(record)
    groups = group_records(small + big)
    assert [(g.task, g.records[0].preset) for g in groups] == [
        ("lunarlander", "paper"), ("lunarlander", "third"), ("lunarlander", "quick"),
        ("other", "quick")]
    text = render_markdown(small + big, plots={"lunarlander": "lunarlander.png"})
    assert text.index("preset paper") < text.index("preset third") < text.index("preset quick")
    # the task's plot shows its first group: it sits under that group and nowhere else
    assert text.count("(lunarlander.png)") == 1
    assert text.index("preset paper") < text.index("(lunarlander.png)") < text.index(
        "preset third")
    page = render_html(small + big, results_dir=None, plots={"lunarlander": "lunarlander.png"})
    assert page.count('src="lunarlander.png"') == 1
    assert page.index('data-preset="paper"') < page.index('src="lunarlander.png"') < page.index(
        'data-preset="third"')


def _recon_group(records):
    (group,) = group_records(records)
    return group


def _table_rows(text):
    """Table VIII's rows as {encoder label: [cells]}."""
    block = text.split("**Table VIII")[1]
    rows = [line.strip("|").split(" | ") for line in block.splitlines() if line.startswith("| ")]
    return {row[0].strip(): [c.strip() for c in row[1:]] for row in rows[1:]}


def reconstruction_records(task="lunarlander", **kw):
    """Two seeds at z 32 and 64 per type; the seed mean decides the best z, not the best seed.

    ae: z32 0.010 / 0.030 (mean 0.020, best single seed 0.010), z64 0.015 / 0.017 (mean 0.016)
    -> best z 64. p_ae: z32 0.020 / 0.024 (mean 0.022), z64 0.040 / 0.044 -> best z 32.
    """
    values = {("ae", 32): (0.010, 0.030), ("ae", 64): (0.015, 0.017),
              ("p_ae", 32): (0.020, 0.024), ("p_ae", 64): (0.040, 0.044)}
    return [make_record(e, z, seed, 5.0, 6.0, task=task, l1_after=l1,
                        l1_before=l1 + 0.01 * (seed + 1), **kw)
            for (e, z), l1s in values.items() for seed, l1 in enumerate(l1s)]


def test_best_z_is_chosen_by_the_seed_mean_not_the_best_seed():
    rows = best_reconstructions(_recon_group(reconstruction_records()))
    assert [(r.encoder, r.z, len(r.records)) for r in rows] == [("ae", 64, 2), ("p_ae", 32, 2)]
    assert rows[0].l1_after == pytest.approx(0.016)
    assert rows[0].zs == (32, 64)


def test_reconstruction_table_relative_percentages_and_paper_row():
    text = render_reconstruction_table(_recon_group(reconstruction_records()))
    rows = _table_rows(text)
    assert list(rows) == ["AE", "P. AE"]   # paper order
    mean, ci = mean_ci([0.015, 0.017])
    assert rows["AE"] == ["64 (of 32, 64)", "2", f"{mean:.4f} ± {ci:.4f}",
                          f"{mean_ci([0.025, 0.037])[0]:.4f} ± {mean_ci([0.025, 0.037])[1]:.4f}",
                          "**100%**", "93%"]
    # lowest / own = 0.016 / 0.022 = 72.7%; the paper's Table VIII row beside it
    assert rows["P. AE"][4:] == ["73%", "100%"]
    assert "| Encoder | best z | seeds | test L1 after retraining | test L1 before | " \
           "relative (ours) | relative (paper) |" in text
    assert "lowest, averaged over seeds" in text
    assert "ours to the types shown here" in text   # only two of the paper's four types


def test_reconstruction_table_with_all_paper_types_orders_them_like_the_paper():
    records = [make_record(e, 64, 0, 5.0, 6.0, task="stl10", l1_after=l1)
               for e, l1 in (("p_vae", 0.05), ("vae", 0.022), ("ae", 0.02), ("p_ae", 0.04))]
    for r in records:
        r["metric"] = {"name": "accuracy", "direction": "higher"}
        r["test"] = {"mlp": 0.5, "linear": 0.4, "baseline": 0.1}
    text = render_reconstruction_table(_recon_group(records))
    rows = _table_rows(text)
    assert list(rows) == ["AE", "VAE", "P. AE", "P. VAE"]
    assert [row[4:6] for row in rows.values()] == [
        ["**100%**", "100%"], ["91%", "92%"], ["50%", "60%"], ["40%", "44%"]]
    assert "ours to the types shown" not in text


def test_reconstruction_table_on_the_board_after_the_probe_tables():
    text = render_markdown(reconstruction_records())
    assert text.count("**Table VIII") == 1
    assert text.index("linear regressors") < text.index("**Table VIII") \
        < text.index("Reconstructions (original")


@pytest.mark.parametrize("init, expected", [
    ("finetune", "Decoder retraining: fine-tuned from the trained decoder (`finetune`), "
                 "at most 15 epochs"),
    ("reinitialize", "Decoder retraining: re-initialised and trained from scratch "
                     "(`reinitialize`), at most 15 epochs"),
    (True, "(`reinitialize`), at most 15 epochs"),      # older record: retraining.reinitialized
    (False, "(`finetune`), at most 15 epochs"),
    (None, "Decoder retraining: not recorded, at most 15 epochs"),
])
def test_decoder_retraining_mode_is_stated(init, expected):
    records = reconstruction_records(decoder_init=init)
    text = render_reconstruction_table(_recon_group(records))
    assert expected in text
    assert "decoder retraining |" not in text   # one mode: no per-row column


def test_decoder_mode_reads_new_and_old_records():
    assert decoder_mode(make_record("ae", 32, 0, 1.0, 1.0, l1_after=0.01,
                                    decoder_init="reinitialize")) == "reinitialize"
    assert decoder_mode(make_record("ae", 32, 0, 1.0, 1.0, l1_after=0.01,
                                    decoder_init=False)) == "finetune"
    assert decoder_mode(make_record("ae", 32, 0, 1.0, 1.0, l1_after=0.01,
                                    decoder_init=None)) == "not recorded"


def test_mixed_decoder_modes_are_flagged_and_shown_per_row():
    records = reconstruction_records()
    for r in records:
        if r["encoder"] == "p_ae":
            r["reconstruction"]["decoder_init"] = "reinitialize"
            r["reconstruction"]["decoder_epochs"] = 5
    text = render_reconstruction_table(_recon_group(records))
    assert "mixes modes in this group (finetune, reinitialize)" in text
    rows = _table_rows(text)
    assert rows["AE"][-1] == "finetune, at most 15 epochs"
    assert rows["P. AE"][-1] == "reinitialize, at most 5 epochs"


def test_mixed_with_not_recorded_is_flagged():
    records = reconstruction_records()
    del records[-1]["reconstruction"]["decoder_init"]
    del records[-1]["reconstruction"]["retraining"]["reinitialized"]
    text = render_reconstruction_table(_recon_group(records))
    assert "mixes modes in this group (finetune, not recorded)" in text
    assert _table_rows(text)["P. AE"][-1] == "finetune, at most 15 epochs"  # best z is 32


def test_no_reconstruction_table_without_reconstruction_results():
    assert render_reconstruction_table(_recon_group(fixed_records())) is None
    assert "**Table VIII:" not in render_markdown(fixed_records())


def test_records_without_reconstruction_are_left_out_of_the_table():
    records = reconstruction_records() + [make_record("pca", 32, 0, 9.0, 10.0)]
    rows = _table_rows(render_reconstruction_table(_recon_group(records)))
    assert list(rows) == ["AE", "P. AE"]


def test_a_non_paper_task_gets_the_table_without_a_paper_column():
    records = reconstruction_records(task="mytask") + [
        make_record("my_ae", 16, 0, 5.0, 6.0, task="mytask", l1_after=0.008)]
    text = render_reconstruction_table(_recon_group(records))
    assert "relative (paper)" not in text and "paper's column" not in text
    rows = _table_rows(text)
    assert list(rows) == ["AE", "P. AE", "my_ae"]  # paper types first, then the others
    assert rows["my_ae"] == ["16 (of 16)", "1", "0.0080", "0.0160", "**100%**"]
    assert rows["AE"][-1] == "50%"   # 0.008 / 0.016


# -- tie groups, paired comparisons and run pictures (from the predictions sidecars) --------


def _publish_with_predictions(home, encoder, z, seed, errors, sidecar=True, task="lunarlander"):
    """Write make_record's record with a sidecar whose per-item errors are ``errors`` px."""
    import numpy as np

    from embench.results import (
        Predictions,
        RunRecord,
        path_of,
        sidecar_path,
        write_predictions,
        write_record,
    )
    from embench.tasks.lunarlander import LunarLanderTask

    y_true = np.random.default_rng(0).uniform(-1, 1, (len(errors), 2))
    angle = np.random.default_rng(100 + seed).uniform(0, 2 * np.pi, len(errors))
    mlp = y_true + np.stack([np.cos(angle), np.sin(angle)], 1) * (errors / 32)[:, None]
    predicted = {"mlp": mlp, "linear": mlp, "baseline": np.zeros_like(mlp)}
    score = LunarLanderTask().score
    data = make_record(encoder, z, seed, score(y_true, mlp), score(y_true, mlp),
                       baseline=score(y_true, predicted["baseline"]), task=task)
    record = RunRecord.from_dict(data)
    path = path_of(home, record)
    if sidecar:
        write_predictions(sidecar_path(path), Predictions(
            items=np.arange(len(errors)), y_true=y_true, predicted=predicted,
            data_fingerprint=record.fingerprints["data"],
            groups=np.repeat(np.arange(len(errors) // 10), 10)))
        record.predictions = sidecar_path(path).name
    return record, write_record(home, record)


def _tie_board(tmp_path, sidecars=("p_vae", "vae", "ae", "pca"), task="lunarlander"):
    import numpy as np

    rng = np.random.default_rng(7)
    best = 2.0 + np.abs(rng.normal(0, 1, 200))
    noise = rng.normal(0.0, 1.0, 200)
    errors = {"p_vae": best,
              "vae": best + noise - noise.mean() + 0.02,      # a hair worse: tied
              "ae": best + 6.0,                               # clearly worse
              "pca": best + 8.0}
    home = tmp_path / "home"
    records = [_publish_with_predictions(home, e, 32, 0, v, sidecar=e in sidecars, task=task)[0]
               for e, v in errors.items()]
    return records, home / "results"


def _row(text, probe_title, z):
    block = text.split(probe_title)[1].split("trivial baseline")[0]
    return next(line for line in block.splitlines() if line.startswith(f"| {z} |"))


def test_cells_tied_with_the_best_are_marked_and_explained(tmp_path):
    records, results = _tie_board(tmp_path)
    text = render_markdown(records, results_dir=results)
    row = _row(text, "for the MLPs", 32)
    cells = dict(zip(["z", "AE", "VAE", "P. VAE", "PCA"], row.strip("| ").split(" | "),
                     strict=True))
    assert cells["P. VAE"].startswith("**")          # the best, bold
    assert "†" in cells["VAE"]                        # not significantly worse: tied
    assert "†" not in cells["AE"] and "†" not in cells["PCA"]
    assert "†" in _row(text, "for the MLPs", "**Any**")
    assert ("† not significantly different from the best cell of its row (bold)" in text
            and "Paired cluster bootstrap over the 20 groups of test items" in text)
    assert "Not tested" not in text


def test_cells_without_predictions_are_not_marked_and_the_legend_says_so(tmp_path):
    records, results = _tie_board(tmp_path, sidecars=("p_vae", "ae", "pca"))
    text = render_markdown(records, results_dir=results)
    assert "†" not in _row(text, "for the MLPs", 32).split(" | ")[2]  # VAE: not tested
    assert "Not tested, no per-item predictions" in text and "VAE z=32" in text
    # without the sidecars at hand nothing is tested and no legend is printed
    assert "†" not in render_markdown(records)


def test_paired_comparisons_follow_the_tables(tmp_path):
    from embench.leaderboard import render_comparisons

    records, results = _tie_board(tmp_path)
    text = render_markdown(records, results_dir=results)
    assert "**Paired comparisons on the same test items**" in text
    lines = [line for line in text.splitlines() if line.startswith("| P. VAE vs VAE | 32 |")]
    assert len(lines) == 2  # MLP and linear
    assert "P. AE vs AE" not in text  # no P. AE records
    section = render_comparisons(records, results_dir=results)
    assert section.startswith("## Paired comparisons") and "| P. VAE vs VAE | 32 | MLP |" in section
    assert render_comparisons(records, results_dir=tmp_path / "elsewhere") is None


def test_a_run_picture_beside_its_record_is_linked(tmp_path):
    records, results = _tie_board(tmp_path)
    record_files = sorted((results / "lunarlander").glob("ae-*.json"))
    picture = record_files[0].with_suffix(".show.png")
    picture.write_bytes(b"\x89PNG")
    text = render_markdown(records, results_dir=results)
    assert f"Pictures of the runs: [ae z=32 seed 0](results/lunarlander/{picture.name})" in text


def test_a_task_that_is_not_installed_leaves_the_cells_untested_and_says_why(tmp_path):
    records, results = _tie_board(tmp_path, task="mytask")
    text = render_markdown(records, results_dir=results)
    assert "†" not in text.split("No cell could be tested")[0]
    assert "No cell could be tested against the best of its row (†). Not tested: " in text
    assert "need the task plugin 'mytask'" in text


def test_linear_rows_are_tested_against_the_trivial_baseline(tmp_path):
    import numpy as np

    # _publish_with_predictions' targets, and the baseline's per-item error (it predicts 0)
    y_true = np.random.default_rng(0).uniform(-1, 1, (200, 2))
    baseline = np.linalg.norm(y_true, axis=1) * 32
    home = tmp_path / "home"
    records = [_publish_with_predictions(home, "p_ae", 32, 0, baseline / 4)[0],
               _publish_with_predictions(home, "ae", 32, 0, baseline)[0],
               _publish_with_predictions(home, "vae", 32, 0, baseline + 5)[0]]
    text = render_markdown(records, results_dir=home / "results")
    block = text.split("**The linear probes against the trivial baseline**")[1].split("\n\n**")[0]
    rows = {line.split(" | ")[0].strip("| "): line for line in block.splitlines()
            if line.startswith("| ") and "---" not in line and "encoder" not in line}
    assert rows["P. AE"].endswith("| **beats it** |")
    assert rows["AE"].endswith("| not different |") and "| 25.23 | 25.23 |" in rows["AE"]
    assert rows["VAE"].endswith("| worse than it |") and "+5.00 px" in rows["VAE"]
    assert "bootstrap over 20 groups of test items" in block
    assert "against the trivial baseline" not in render_markdown(records)  # no sidecars: none


def test_the_published_board_says_how_it_was_made_and_shows_its_notes(tmp_path):
    from embench.leaderboard import publish

    _, results = _tie_board(tmp_path)
    out = tmp_path / "board"
    out.mkdir()
    (out / "NOTES.md").write_text("Our reading: P. VAE wins.\n")
    text = publish(sorted(results.rglob("*.json")), out).read_text()
    assert text.index("Our reading: P. VAE wins.") < text.index("## lunarlander")
    assert "How these numbers were made" in text
    assert "embench reproduce --task lunarlander --preset quick --seeds 1 --z 32\n" in text
    assert "| P. VAE | 32 | 0 | 0 s | 0 s | 0 s | 0 s | 0 s | 0 s | – |" in text
    assert "embench reproduce --task stl10 --preset quick --seeds 3" in text
    # render_markdown alone (notebooks, the golden file) adds neither
    assert "How these numbers were made" not in render_markdown(
        [load_record(p) for p in sorted(results.rglob("*.json"))], results_dir=results)


def test_the_run_table_marks_embeddings_read_from_the_cache(tmp_path):
    from embench.compare import encoder_label
    from embench.leaderboard import publish

    _, results = _tie_board(tmp_path)
    paths = sorted(results.rglob("*.json"))
    data = json.loads(paths[0].read_text())
    data["cache"] = {"checkpoint_hit": False, "embedding_cache_hit": True}
    data["timings"] = {**(data.get("timings") or {}), "embed_seconds": 0.02}
    paths[0].write_text(json.dumps(data))
    out = tmp_path / "board"
    out.mkdir()
    text = publish(paths, out).read_text()
    rows = [line for line in text.splitlines() if "| cached ‡ |" in line]
    assert len(rows) == 1 and rows[0].startswith(f"| {encoder_label(data['encoder'])} |")
    assert "‡ reused the embeddings an earlier run had cached" in text


def test_the_run_table_counts_every_epoch_of_a_resumed_fit(tmp_path):
    from embench.leaderboard import publish

    _, results = _tie_board(tmp_path)
    paths = sorted(results.rglob("*.json"))
    data = json.loads(paths[0].read_text())
    # killed after an hour of epochs, resumed: the last process trained 10 minutes of them
    data["cache"] = {"checkpoint_hit": False, "embedding_cache_hit": False}
    data["timings"] = {"data_seconds": 0.0, "train_seconds": 600.0, "embed_seconds": 0.0,
                       "probe_seconds": 0.0, "reconstruction_seconds": 0.0}
    data["training"] = {**(data.get("training") or {}), "fit_seconds": 600.0,
                        "train_seconds": 4200.0}
    paths[0].write_text(json.dumps(data))
    out = tmp_path / "board"
    out.mkdir()
    text = publish(paths, out).read_text()
    [row] = [line for line in text.splitlines() if " | 70 min § | " in line]
    assert row.endswith("| 70 min | – |")  # the wall time counts the whole training
    assert "§ resumed after an interruption" in text
    assert text.count("§") == 2  # its mark and the footnote: the other runs were not resumed


@pytest.mark.parametrize("direction", ["lower", "higher"])
def test_cells_no_better_than_the_baseline_are_marked_as_no_result(direction):
    from embench.results import NOT_A_RESULT

    def record(encoder, mlp, linear, baseline):
        r = make_record(encoder, 32, 0, mlp, linear, baseline=baseline, preset="smoke")
        if direction == "higher":
            r["metric"] = {"name": "accuracy", "direction": "higher"}
        return r

    # lower is better: 104 px is worse than the 17.6 px baseline; higher: 0.05 < 0.10
    bad, good, base = (104.0, 5.0, 17.6) if direction == "lower" else (0.05, 0.9, 0.10)
    text = render_markdown([record("pca", good, bad, base), record("zeta", good, good, base)])
    mlp, linear = (part.split("\n\n**")[0] for part in text.split("lowest validation loss**")[1:])
    fmt = (lambda v: f"{v:.2f}") if direction == "lower" else (lambda v: f"{100 * v:.1f}%")
    assert f"| 32 | **{fmt(good)}** | **{fmt(good)}** |" in mlp and "✗" not in mlp
    assert f"| 32 | {fmt(bad)} ✗ | **{fmt(good)}** |" in linear
    assert f"| **Any** | {fmt(bad)} ✗ | **{fmt(good)}** |" in linear
    assert f"\n\n✗ {NOT_A_RESULT[0].upper()}{NOT_A_RESULT[1:]}." in linear


def test_cells_still_improving_at_the_cap_are_marked_and_explained():
    """A cell with a seed cut short by its epoch cap is marked; older records are judged too."""
    capped = make_record("p_vae", 64, 0, 3.0, 6.0)
    capped["training"] = {"stop_reason": "epoch_cap", "still_improving": True}
    settled = make_record("p_ae", 64, 0, 2.0, 5.0)
    settled["training"] = {"stop_reason": "early_stopping", "still_improving": False}
    older = make_record("ae", 64, 0, 12.0, 13.0)  # before 0.5.0: a history and a cap only
    older["encoder_config"]["max_epochs"] = 15
    older["training"] = {"history": [{"train_loss": 1.0 / e, "val_loss": 1.1 / e}
                                     for e in range(1, 16)]}
    text = render_markdown([capped, settled, older])
    row = next(line for line in text.splitlines() if line.startswith("| 64 |"))
    cells = dict(zip(["z", "AE", "P. AE", "P. VAE"], row.strip("|").split("|"), strict=False))
    assert "↻" in cells["P. VAE"] and "↻" in cells["AE"] and "↻" not in cells["P. AE"]
    assert "↻ Training was still improving when the epoch cap stopped it" in text
    assert "↻" not in render_markdown([settled])
