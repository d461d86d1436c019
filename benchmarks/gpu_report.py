"""The GPU check's report (part f): model FLOP utilisation beside each figure, the targets of
issue 17 marked met/missed, and the Markdown of docs/benchmarks-gpu.md."""

from __future__ import annotations

import os

# Peak dense (no sparsity) tensor throughput, TFLOP/s. bf16 is issue 17's figure for the H200
# (NVIDIA's datasheet gives 989 for the SXM part: MFU against it would read 0.8x these); TF32
# tensor cores run at half the bf16 rate on Hopper; fp32 without tensor cores is the
# datasheet's 67.
# The H100 SXM has the H200's compute (only its memory is smaller and slower): the same figures.
GPU_PEAKS = {
    "H200": {"bf16": 790.0, "tf32": 395.0, "fp32": 67.0},
    "H100": {"bf16": 790.0, "tf32": 395.0, "fp32": 67.0},
}
# A CPU (the dry run) has no such figure: a nominal one, so the arithmetic runs end to end.
CPU_GHZ, CPU_FLOP_PER_CYCLE = 3.0, 32  # 2 AVX2 FMA units x 8 fp32 lanes x 2
TARGET_STEPS, FLOOR_STEPS = 60.0, 30.0  # paper U-Net bf16 steps/s at batch 128 (issue 17)
CONV_KINDS = ("ddpm", "conv_vae")  # kinds whose FLOPs are convolutions (cuDNN's TF32 switch)


def peaks(env: dict) -> dict:
    """{bf16, tf32, fp32: TFLOP/s, source: text} for the machine the check ran on."""
    if env.get("device") == "cuda":
        gpu = env.get("gpu", "")
        name = next((n for n in GPU_PEAKS if n in gpu), None)
        table = GPU_PEAKS[name or "H200"]
        source = f"{name} dense peaks" if name else f"{gpu!r} unknown: H200 peaks assumed"
        return {**table, "source": source}
    threads = env.get("torch_threads") or os.cpu_count() or 1
    nominal = threads * CPU_GHZ * CPU_FLOP_PER_CYCLE / 1e3
    source = f"nominal CPU: {threads} threads x {CPU_GHZ:g} GHz x {CPU_FLOP_PER_CYCLE} FLOP/cycle"
    return {"bf16": nominal, "tf32": nominal, "fp32": nominal, "source": source}


def peak_for(precision: str, kind: str, env: dict, table: dict) -> tuple[str, float]:
    """Which peak a run is measured against: bf16 for bf16-mixed; for fp32, TF32 where torch
    lets that kind's main op use it (convolutions: cudnn.allow_tf32, on by default; matmuls:
    cuda.matmul.allow_tf32, off by default), else plain fp32."""
    if precision.startswith("bf16"):
        return "bf16", table["bf16"]
    conv = kind.startswith(CONV_KINDS)
    tf32 = env.get("cudnn_allow_tf32") if conv else env.get("matmul_allow_tf32")
    return ("tf32", table["tf32"]) if tf32 else ("fp32", table["fp32"])


def utilisation(flops_per_step: float, steps_per_s: dict, peak: float) -> dict:
    achieved = {k: flops_per_step * v / 1e12 for k, v in steps_per_s.items()}
    return {"tflops": achieved, "mfu": {k: v / peak for k, v in achieved.items()}}


def summarise(results: dict) -> None:
    """Adds utilisation to every measured row and the targets list, in place."""
    env, counts = results["env"], results.get("flops", {})
    table = peaks(env)
    results["peaks_tflops"] = table
    for row in results.get("unet_training", []):
        step = counts.get(f"{row['kind']}@{row['batch_size']}")
        name, peak = peak_for("bf16" if "bf16" in row["config"] else "32", row["kind"], env, table)
        if step:
            row["utilisation"] = {"peak": name, "peak_tflops": peak}
            row["utilisation"].update(utilisation(step["flops_per_step"], row["steps_per_s"], peak))
    for row in results.get("latent_throughput", []):
        step = counts.get(f"{row['kind']}@{row['batch_size']}")
        name, peak = peak_for("32", row["kind"], env, table)
        if step:
            per_s = {k: v / row["batch_size"] for k, v in row["images_per_s"].items()}
            row["utilisation"] = {"peak": name, "peak_tflops": peak}
            row["utilisation"].update(utilisation(step["flops_per_step"], per_s, peak))
    sampling = results.get("unet_sampling")
    step = counts.get(f"{sampling['kind']}@{sampling['batch_size']}") if sampling else None
    if step:
        name, peak = peak_for("32", sampling["kind"], env, table)
        calls = {"ddim": sampling["ddim_steps"], "ancestral": sampling["ancestral_subset_steps"]}
        secs = {"ddim": sampling["ddim_seconds"], "ancestral": sampling["ancestral_subset_seconds"]}
        achieved = {k: step["forward_flops"] * calls[k] / secs[k] / 1e12 for k in calls}
        sampling["utilisation"] = {
            "peak": name,
            "peak_tflops": peak,
            "tflops": achieved,
            "mfu": {k: v / peak for k, v in achieved.items()},
        }
    results["targets"] = targets(results)


def _verdict(ok: bool, dry_run: bool) -> str:
    return ("met" if ok else "missed") + (" (dry run)" if dry_run else "")


def targets(results: dict) -> list[dict]:
    dry = results["dry_run"]
    rows = []
    bf16 = [r for r in results.get("unet_training", []) if "bf16" in r["config"]]
    goal = (
        f"paper U-Net bf16 training step, batch 128: >= {TARGET_STEPS:g} steps/s, never below "
        f"{FLOOR_STEPS:g} (DDPM paper: 21 steps/s on a TPU v3-8)"
    )
    if bf16:
        best = max(bf16, key=lambda r: r["steps_per_s"]["genlab"])
        value = best["steps_per_s"]["genlab"]
        status = _verdict(value >= TARGET_STEPS, dry)
        if value < FLOOR_STEPS:
            status += f", below the {FLOOR_STEPS:g} floor"
        text = f"{value:.2f} steps/s ({best['config']}, {best['kind']}, batch {best['batch_size']})"
        rows.append({"target": goal, "value": text, "status": status})
        ratio = best["genlab_over_plain"]
        rows.append(
            {
                "target": "genlab's step >= 0.95 of the plain PyTorch loop (same configuration)",
                "value": f"{ratio:.2f} ({best['config']})",
                "status": _verdict(ratio >= 0.95, dry),
            }
        )
    else:
        rows.append({"target": goal, "value": "not measured", "status": "not measured"})
    sampling = results.get("unet_sampling")
    goal = "DDIM-50 >= 18x faster than ancestral sampling over T = 1000"
    if sampling:
        speedup = sampling["ddim_speedup"]
        text = f"{speedup:.1f}x (ancestral extrapolated from {sampling['ancestral_subset_steps']})"
        rows.append({"target": goal, "value": text, "status": _verdict(speedup >= 18, dry)})
    else:
        rows.append({"target": goal, "value": "not measured", "status": "not measured"})
    runs = results.get("train_runs", [])
    good = sum("problem" not in r for r in runs)
    rows.append(
        {
            "target": "every train.py run exits 0 with a checkpoint and finite metrics",
            "value": f"{good} of {len(results['settings']['train_runs'])}",
            "status": _verdict(bool(runs) and good == len(results["settings"]["train_runs"]), dry),
        }
    )
    stage = {s["stage"]: s["status"] for s in results["stages"]}
    counts = results.get("cuda_tests", {}).get("counts", {})
    rows.append(
        {
            "target": "the CUDA tests pass (pytest -m cuda)",
            "value": ", ".join(f"{n} {k}" for k, n in counts.items()) or "not run",
            "status": _verdict(stage.get("cuda_tests") == "ok" and bool(counts), dry),
        }
    )
    return rows


# -- Markdown ----------------------------------------------------------------------------------
def _table(header: list[str], rows: list[list]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]


def _pct(util: dict | None, loop: str) -> str:
    if not util:
        return "n/a"
    return f"{util['tflops'][loop]:.3g} TFLOP/s, {100 * util['mfu'][loop]:.2g}% of {util['peak']}"


def markdown(results: dict) -> str:
    env, dry = results["env"], results["dry_run"]
    machine = env.get("gpu") or f"CPU ({env.get('cpu_count')} cores)"
    title = "# GPU check (`python3 benchmarks/gpu_check.py`)"
    out = [("# DRY RUN, not a measurement: " + title[2:]) if dry else title, ""]
    if dry:
        out += [
            "**Dry run** (`--dry-run`): CPU, tiny sizes, compile with dynamo's eager backend. "
            "It checks that every stage runs; its numbers are no measurement.",
            "",
        ]
    out += [
        f"{machine}; torch {env.get('torch')}, Lightning {env.get('lightning')}, "
        f"Python {env.get('python')}; {results['seconds']} s in all. "
        f"Peaks for utilisation: {results['peaks_tflops']['source']}, bf16 "
        f"{results['peaks_tflops']['bf16']:.3g}, TF32 {results['peaks_tflops']['tf32']:.3g}, "
        f"fp32 {results['peaks_tflops']['fp32']:.3g} TFLOP/s.",
        "",
        "## Targets",
        "",
    ]
    out += _table(
        ["target", "this run", ""],
        [[t["target"], t["value"], t["status"]] for t in results["targets"]],
    )
    out += ["", "## Stages", ""]
    out += _table(
        ["stage", "status", "seconds", "budget s", "note"],
        [
            [s["stage"], s["status"], s["seconds"], s["budget_s"], s.get("note", "")]
            for s in results["stages"]
        ],
    )
    for s in results["stages"]:
        if s.get("error"):
            out += ["", f"`{s['stage']}` failed:", "", "```", s["error"], "```"]
    rows = results.get("unet_training", [])
    if rows:
        out += [
            "",
            f"## U-Net training step ({rows[0]['kind']}, batch {rows[0]['batch_size']})",
            "",
        ]
        out += _table(
            ["configuration", "genlab steps/s", "plain steps/s", "genlab / plain", "genlab MFU"],
            [
                [
                    r["config"],
                    f"{r['steps_per_s']['genlab']:.2f}",
                    f"{r['steps_per_s']['plain']:.2f}",
                    f"{r['genlab_over_plain']:.2f}",
                    _pct(r.get("utilisation"), "genlab"),
                ]
                for r in rows
            ],
        )
        done = {r["config"] for r in rows}
        missing = [c for c in ("fp32", "bf16", "bf16 + compile") if c not in done]
        if missing:
            out += ["", f"Not reached: {', '.join(missing)} (and any after them)."]
    sampling = results.get("unet_sampling")
    if sampling:
        u = sampling.get("utilisation")
        out += ["", f"## Sampling ({sampling['kind']}, batch {sampling['batch_size']}, fp32)", ""]
        out += _table(
            ["sampler", "network calls", "seconds per batch", "images/s", "utilisation"],
            [
                [
                    f"DDIM-{sampling['ddim_steps']}",
                    sampling["ddim_steps"],
                    f"{sampling['ddim_seconds']:.3g}",
                    f"{sampling['batch_size'] / sampling['ddim_seconds']:.3g}",
                    _pct(u, "ddim"),
                ],
                [
                    "ancestral (extrapolated)",
                    sampling["timesteps"],
                    f"{sampling['ancestral_seconds_extrapolated']:.3g}",
                    f"{sampling['batch_size'] / sampling['ancestral_seconds_extrapolated']:.3g}",
                    _pct(u, "ancestral"),
                ],
            ],
        )
        out += [
            "",
            f"Ancestral sampling was timed over a {sampling['ancestral_subset_steps']}-step "
            f"schedule and scaled by {sampling['timesteps']}/{sampling['ancestral_subset_steps']}"
            ": each step is one network call on the same batch, whatever T is.",
        ]
    rows = results.get("latent_throughput", [])
    if rows:
        out += ["", "## VAE / AE, data on the device", ""]
        out += _table(
            ["case", "batch", "genlab images/s", "plain images/s", "genlab / plain", "MFU"],
            [
                [
                    r["case"],
                    r["batch_size"],
                    f"{r['images_per_s']['genlab']:.4g}",
                    f"{r['images_per_s']['plain_tensor_loop']:.4g}",
                    f"{r['ratio_to_floor']:.2f}",
                    _pct(r.get("utilisation"), "genlab"),
                ]
                for r in rows
            ],
        )
    runs = results.get("train_runs", [])
    if runs:
        out += ["", "## `train.py` runs", ""]
        out += _table(
            ["model", "precision", "exit", "seconds", "val/loss", "result"],
            [
                [
                    r["model"],
                    r["precision"],
                    r.get("exit_code", "-"),
                    r.get("seconds", "-"),
                    f"{r['metrics']['val/loss']:.4g}"
                    if "val/loss" in r.get("metrics", {})
                    else "-",
                    r.get("problem", "ok: checkpoint, finite metrics"),
                ]
                for r in runs
            ],
        )
    counts = results.get("flops", {})
    if counts:
        out += ["", "## FLOPs of one training step (FlopCounterMode, forward + backward)", ""]
        out += _table(
            ["model", "parameters", "batch", "GFLOP per step", "GFLOP per image", "forward share"],
            [
                [
                    c["kind"],
                    f"{c['parameters']:,}",
                    c["batch_size"],
                    f"{c['flops_per_step'] / 1e9:.4g}",
                    f"{c['flops_per_step'] / c['batch_size'] / 1e9:.4g}",
                    f"{c['forward_flops'] / c['flops_per_step']:.2f}",
                ]
                for c in counts.values()
            ],
        )
        where = {c.get("counted_on") for c in counts.values()} - {None}
        if where:
            out += [
                "",
                f"Counted on the {', '.join(sorted(where))} at a small batch and scaled to the "
                "batch shown (every op counted is linear in the batch); FLOPs do not depend on "
                "the device.",
            ]
    if results.get("notes"):
        out += ["", "## Notes", ""] + [f"- {note}" for note in results["notes"]]
    return "\n".join(out) + "\n"
