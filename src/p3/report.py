"""The per-epoch selection report: one renderer for the pipeline and the CLI.

For every epoch it shows what P3 decided and why:

- the difficulty histogram of the pool, the eligible set and the selection, with the
  pacing threshold;
- how difficulty changed since the last epoch (re-scored by the new policy), split by
  whether a problem was trained on;
- the DPP rounds (picks per round);
- the diversity of the selection (log-det, mean pairwise cosine) next to random
  selections of the same size from the same pool;
- coverage of levels and types (pool vs selected);
- the epoch's evaluation (accuracy overall and by level).

Plots are real matplotlib images (Agg) embedded as base64 PNG, so one HTML file is
self-contained and opens in any browser or in the Kubeflow UI's HTML viewer.

Entry points (the run data they render is loaded by :mod:`p3.rundata`):

- :func:`render_epoch` -> ``(html, markdown, metrics)`` for one epoch (the KFP report
  component writes them to its ``HTML``, ``Markdown`` and ``Metrics`` outputs);
- :func:`render_run` -> one HTML page with every epoch and a run summary;
- :func:`render_report` (``p3 report``) renders a run folder to ``report.html`` (+ ``.md``).
"""

from __future__ import annotations

import base64
import html
import io
import json
import os
import re
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from p3 import checks, outputs
from p3.logs import get_logger, step

from p3.rundata import (
    PROBLEMS_FILE,
    EpochData,
    _first_existing,
    _join,
    coverage,
    difficulty_change,
    difficulty_threshold,
    epoch_metrics,
    find_epoch_dirs,
    load_epoch_dir,
    load_meta,
    natural_key,
)

log = get_logger("report")

@dataclass
class ReportConfig:
    """Options of ``p3 report``."""

    run_dir: str = field(
        default="",
        metadata={"io": "in", "help": "run folder with one sub-folder per epoch (epoch_0, epoch_1, …); local path or URI"},
    )
    epoch_dirs: list[str] = field(
        default_factory=list,
        metadata={"io": "in", "help": "epoch folders in order (instead of discovering them under --run-dir)"},
    )
    problems: str = field(
        default="",
        metadata={"io": "in", "help": "problems table for level/type coverage (default: found in the run or epoch folder)"},
    )
    out: str = field(default="", metadata={"io": "out", "help": "HTML output (default: <run-dir>/report.html)"})
    markdown: bool = field(default=True, metadata={"help": "also write the Markdown report beside the HTML"})
    title: str = field(default="P3 selection report", metadata={"help": "page title"})
    seed: int = field(default=0, metadata={"min": 0, "help": "seed of the random-selection diversity baseline"})

    def __post_init__(self) -> None:
        checks.validate(self)


# ----------------------------------------------------------------------------- plots


def _png(fig) -> str:
    """A matplotlib figure as a base64 PNG string (figure closed)."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _figure(w: float = 6.0, h: float = 3.4):
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=(w, h))


def plot_difficulty(data: EpochData) -> str | None:
    """Histogram: pool vs eligible vs selected difficulty, with the pacing threshold."""
    if data.difficulty is None:
        return None
    fig, ax = _figure()
    bins = np.linspace(0.0, 1.0, 41)
    ax.hist(data.difficulty, bins=bins, color="#bbbbbb", label=f"pool ({len(data.difficulty)})")
    # eligibility is what the selector decided (and wrote), not re-derived here
    eligible = (data.selection_report.get("difficulty") or {}).get("eligible") or {}
    if eligible.get("hist") and eligible["n"] < len(data.difficulty):
        ax.stairs(eligible["hist"]["counts"], eligible["hist"]["edges"], fill=True, color="#6baed6",
                  label=f"eligible ({eligible['n']})")
    if data.selected_difficulty is not None:
        ax.hist(data.selected_difficulty, bins=bins, color="#d94801", alpha=0.85,
                label=f"selected ({len(data.selected_difficulty)})")
    thr = difficulty_threshold(data)
    if thr is not None:
        ax.axvline(thr, color="black", linestyle="--", linewidth=1.2, label=f"threshold {thr:.3f}")
    lo, hi = float(data.difficulty.min()), float(data.difficulty.max())
    pad = max(0.02, 0.05 * (hi - lo))
    ax.set_xlim(max(0.0, lo - pad), min(1.0, hi + pad))
    ax.set_xlabel("difficulty (higher = harder)")
    ax.set_ylabel("problems")
    ax.set_title(f"Epoch {data.epoch}: difficulty of pool, eligible, selected")
    ax.legend(fontsize=8)
    return _png(fig)


def plot_difficulty_change(change: dict[str, Any], epoch: int) -> str:
    """Scatter of last epoch's vs this epoch's difficulty (below the diagonal = easier now)."""
    fig, ax = _figure(5.0, 4.0)
    prev, cur = change["prev"], change["cur"]
    trained = change.get("trained")
    if trained is None:
        ax.scatter(prev, cur, s=6, alpha=0.5, color="#3182bd", label="problems")
    else:
        ax.scatter(prev[~trained], cur[~trained], s=6, alpha=0.45, color="#999999", label="not trained last epoch")
        ax.scatter(prev[trained], cur[trained], s=6, alpha=0.7, color="#d94801", label="trained last epoch")
    lo = float(min(prev.min(), cur.min()))
    hi = float(max(prev.max(), cur.max()))
    ax.plot([lo, hi], [lo, hi], color="black", linewidth=0.8, linestyle=":")
    ax.set_xlabel(f"difficulty at epoch {epoch - 1}")
    ax.set_ylabel(f"difficulty at epoch {epoch}")
    ax.set_title(f"Epoch {epoch}: re-scored difficulty (mean Δ {change['mean_delta']:+.4f})")
    ax.legend(fontsize=8, markerscale=2)
    return _png(fig)


def plot_coverage(pool: dict[str, int], selected: dict[str, int], what: str, epoch: int) -> str:
    """Share of each level/type in the pool vs the selection."""
    keys = list(dict.fromkeys(list(pool) + list(selected)))
    keys.sort(key=natural_key)
    n_pool = max(1, sum(pool.values()))
    n_sel = max(1, sum(selected.values()))
    x = np.arange(len(keys))
    fig, ax = _figure(max(4.5, 0.8 * len(keys) + 2), 3.2)
    ax.bar(x - 0.2, [pool.get(k, 0) / n_pool for k in keys], width=0.4, color="#bbbbbb", label="pool")
    ax.bar(x + 0.2, [selected.get(k, 0) / n_sel for k in keys], width=0.4, color="#d94801", label="selected")
    long = sum(len(k) for k in keys) > 40  # long subject names need slanted labels
    ax.set_xticks(x, keys, rotation=30 if long else 0, ha="right" if long else "center", fontsize=8)
    ax.set_ylabel("share")
    ax.set_title(f"Epoch {epoch}: {what} coverage")
    ax.legend(fontsize=8)
    return _png(fig)


def plot_rounds(rounds: np.ndarray, epoch: int) -> str:
    """Picks per DPP round (a rank-d kernel admits at most d picks per round)."""
    ids, counts = np.unique(rounds, return_counts=True)
    fig, ax = _figure(5.0, 2.8)
    ax.bar(ids, counts, color="#6a51a3", width=0.8)
    ax.set_xlim(ids.min() - 0.6, ids.max() + 0.6)
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_xlabel("DPP round")
    ax.set_ylabel("picks")
    ax.set_title(f"Epoch {epoch}: DPP rounds ({len(ids)})")
    return _png(fig)


def plot_run(epochs: Sequence[EpochData]) -> str | None:
    """Accuracy (overall and per level) and selected/eligible counts across epochs."""
    xs = [d.epoch for d in epochs]
    accs = [d.metrics.get("accuracy") for d in epochs]
    if all(a is None for a in accs):
        return None
    fig, ax = _figure(6.0, 3.4)
    ax.plot(xs, [np.nan if a is None else a for a in accs], marker="o", color="black", linewidth=2, label="overall")
    levels = sorted({lv for d in epochs for lv in _by_level(d.metrics)}, key=natural_key)
    for lv in levels:
        ax.plot(xs, [_by_level(d.metrics).get(lv, np.nan) for d in epochs], marker=".", linewidth=1,
                alpha=0.8, label=f"level {lv}")
    ax.set_xlabel("epoch")
    ax.set_ylabel("test accuracy")
    ax.set_ylim(-0.02, 1.02)
    ax.set_xticks(xs)
    ax.set_title("Evaluation after each epoch")
    ax.legend(fontsize=7, ncol=2)
    return _png(fig)


# ----------------------------------------------------------------------------- rendering


def render_epoch(data: EpochData, seed: int = 0) -> tuple[str, str, dict[str, float]]:
    """One epoch's report: (a full HTML page, Markdown, the Metrics dict for the pipeline)."""
    with step(log, f"render epoch {data.epoch} report") as counts:
        body, md = _epoch_sections(data, seed)
        page = _page(f"P3 epoch {data.epoch}", body)
        counts.update(plots=page.count('<img class="plot"'), kb=len(page) // 1024)
    return page, md, epoch_metrics(data)


def render_run(epochs: Sequence[EpochData | str], title: str = "P3 selection report", seed: int = 0,
               problems: str | None = None) -> tuple[str, str]:
    """One page with a run summary and every epoch. ``epochs``: EpochData or epoch folders.

    Returns (html, markdown).
    """
    datas = _as_epoch_data(epochs, problems)
    with step(log, "render run report") as counts:
        parts_html, parts_md = [], [f"# {title}\n"]
        summary_rows = []
        for d in datas:
            m = epoch_metrics(d)
            summary_rows.append([d.epoch, _fmt(m.get("accuracy")), _fmt(m.get("selected"), 0),
                                 _fmt(m.get("eligible"), 0), _fmt(m.get("threshold"))])
        head = ["epoch", "accuracy", "selected", "eligible", "threshold"]
        nav = " · ".join(f'<a href="#epoch-{d.epoch}">epoch {d.epoch}</a>' for d in datas)
        summary = f"<p>{nav}</p>\n<h2>Summary</h2>\n" + _html_table(head, summary_rows)
        run_png = plot_run(datas)
        if run_png:
            summary += _img(run_png, "accuracy per epoch", "plot-run-accuracy")
        parts_md.append("## Summary\n\n" + _md_table(head, summary_rows))
        for d in datas:
            h, m = _epoch_sections(d, seed)
            parts_html.append(h)
            parts_md.append(m)
        counts["epochs"] = len(datas)
    return _page(title, summary + "\n".join(parts_html)), "\n".join(parts_md)


def render_report(cfg: ReportConfig) -> str:
    """``p3 report``: render a run folder (or explicit epoch folders) to report.html."""
    if not cfg.run_dir and not cfg.epoch_dirs:
        raise ValueError("give --run-dir or --epoch-dirs")
    epoch_dirs = list(cfg.epoch_dirs) or find_epoch_dirs(cfg.run_dir)
    if not epoch_dirs:
        raise ValueError(f"{cfg.run_dir}: no epoch folders (epoch_0, epoch_1, …) found")
    problems = cfg.problems or (_first_existing(cfg.run_dir, PROBLEMS_FILE) if cfg.run_dir else None)
    page, md = render_run(epoch_dirs, title=cfg.title, seed=cfg.seed, problems=problems)
    out = cfg.out or _join(cfg.run_dir or os.path.dirname(epoch_dirs[0].rstrip("/")), "report.html")
    with outputs.Commit() as commit:  # the Markdown first, the HTML page (primary) last
        if cfg.markdown:
            commit.text(md, re.sub(r"\.html?$", "", out) + ".md")
        commit.text(page, out)
    log.info(f"wrote {out} ({len(epoch_dirs)} epochs)")
    return out


def _as_epoch_data(epochs: Sequence[EpochData | str], problems: str | None) -> list[EpochData]:
    out: list[EpochData] = []
    prev_dir = None
    # the caller's loaded epoch already holds the table's meta: no second read
    meta = next((e.meta for e in epochs if isinstance(e, EpochData) and e.meta is not None), None)
    if meta is None and problems:
        meta = load_meta(problems)
    for e in epochs:
        if isinstance(e, EpochData):
            out.append(e)
            continue
        d = load_epoch_dir(e, previous_dir=prev_dir)
        if d.meta is None:
            d.meta = meta
        out.append(d)
        prev_dir = e
    return out


def _epoch_sections(d: EpochData, seed: int) -> tuple[str, str]:
    """HTML section and Markdown for one epoch (rendered once per data and seed)."""
    if seed not in d.sections:
        d.sections[seed] = _render_sections(d, seed)
    return d.sections[seed]


def _render_sections(d: EpochData, seed: int) -> tuple[str, str]:
    e = d.epoch
    h = [f'<section id="epoch-{e}">', f"<h2>Epoch {e}</h2>"]
    md = [f"## Epoch {e}\n"]
    rep = d.selection_report
    m = epoch_metrics(d)

    # Selection in numbers.
    rows = [["strategy", str(rep.get("strategy", "?"))]]
    pool_n = rep.get("pool", len(d.ids) if d.ids is not None else None)
    rows += [["pool", _fmt(pool_n, 0)], ["eligible", _fmt(m.get("eligible"), 0)],
             ["selected", _fmt(m.get("selected"), 0)], ["pacing threshold", _fmt(m.get("threshold"))]]
    if rep.get("percentile") is not None:
        rows.append(["pacing percentile", _fmt(rep.get("percentile"), 1)])
    if d.selected_difficulty is not None and len(d.selected_difficulty):
        rows.append(["selected difficulty mean", _fmt(float(d.selected_difficulty.mean()))])
    if d.difficulty is not None and len(d.difficulty):
        rows.append(["pool difficulty mean", _fmt(float(d.difficulty.mean()))])
    h.append("<h3>Selection</h3>" + _html_table(["", ""], rows))
    md.append("### Selection\n\n" + _md_table(["", ""], rows))

    png = plot_difficulty(d)
    h.append(_img(png, f"epoch {e} difficulty histogram", f"plot-difficulty-{e}") if png
             else "<p>No difficulty table for this epoch.</p>")

    change = difficulty_change(d)
    h.append("<h3>Difficulty change since the last epoch</h3>")
    md.append("### Difficulty change since the last epoch\n")
    if change is None:
        text = "First epoch (nothing to compare with)." if e == 0 else "No previous difficulty table."
        h.append(f"<p>{text}</p>")
        md.append(text + "\n")
    else:
        crow = [["problems re-scored", str(change["n"])], ["mean Δ difficulty", _fmt(change["mean_delta"], 4, sign=True)]]
        if "mean_delta_trained" in change:
            crow += [["mean Δ, trained last epoch", _fmt(change["mean_delta_trained"], 4, sign=True)],
                     ["mean Δ, not trained last epoch", _fmt(change["mean_delta_untrained"], 4, sign=True)]]
        h.append(_html_table(["", ""], crow))
        h.append(_img(plot_difficulty_change(change, e), f"epoch {e} difficulty change", f"plot-change-{e}"))
        md.append(_md_table(["", ""], crow))

    # DPP rounds.
    has_rounds = d.rounds is not None and len(d.rounds) > 0
    n_rounds = int(len(np.unique(d.rounds))) if has_rounds else rep.get("rounds")
    if n_rounds and (not has_rounds or d.rounds.max() > 0 or str(rep.get("strategy", "")) in ("dpp", "p3")):
        h.append(f"<h3>DPP rounds</h3><p>{n_rounds} round(s).</p>")
        md.append(f"### DPP rounds\n\n{n_rounds} round(s).\n")
        if d.rounds is not None and len(d.rounds):
            h.append(_img(plot_rounds(d.rounds, e), f"epoch {e} DPP rounds", f"plot-rounds-{e}"))

    # Diversity vs random: the selector's numbers (it had the pool's embeddings in memory).
    div = rep.get("diversity")
    h.append("<h3>Diversity</h3>")
    md.append("### Diversity\n")
    if not div:
        text = "No embeddings for this epoch, or a selection too small to measure."
        h.append(f"<p>{text}</p>")
        md.append(text + "\n")
    else:
        drow = [["log det(I + S), S = cosine Gram", _fmt(div["selected"]["logdet"], 2), _fmt(div["random"]["logdet"], 2)],
                ["mean pairwise cosine (lower = more diverse)", _fmt(div["selected"]["mean_cosine"], 4),
                 _fmt(div["random"]["mean_cosine"], 4)]]
        head = ["", f"selected (k={div['k']})", f"random from the eligible pool, same k (mean of {div['draws']})"]
        h.append(_html_table(head, drow))
        md.append(_md_table(head, drow))

    # Coverage of levels / types.
    if d.meta is not None and d.selected:
        pool_ids = d.ids if d.ids is not None else list(d.meta)
        h.append("<h3>Coverage</h3>")
        md.append("### Coverage\n")
        for key in ("level", "type"):
            pc, sc = coverage(d.meta, pool_ids, key), coverage(d.meta, d.selected, key)
            if set(pc) == {"?"}:
                continue
            keys = sorted(set(pc) | set(sc), key=natural_key)
            crow = [[k, str(pc.get(k, 0)), str(sc.get(k, 0))] for k in keys]
            h.append(_html_table([key, "pool", "selected"], crow))
            h.append(_img(plot_coverage(pc, sc, key, e), f"epoch {e} {key} coverage", f"plot-coverage-{key}-{e}"))
            md.append(_md_table([key, "pool", "selected"], crow))
    elif rep.get("coverage"):
        h.append("<h3>Coverage</h3><pre>" + html.escape(json.dumps(rep["coverage"], indent=1)) + "</pre>")
        md.append("### Coverage\n\n```\n" + json.dumps(rep["coverage"], indent=1) + "\n```\n")

    # Evaluation.
    h.append("<h3>Evaluation</h3>")
    md.append("### Evaluation\n")
    if not d.metrics:
        h.append("<p>No evaluation for this epoch.</p>")
        md.append("No evaluation for this epoch.\n")
    else:
        erow = [["overall", _fmt(d.metrics.get("accuracy"))]]
        erow += [[f"level {k}", _fmt(v)] for k, v in sorted(_by_level(d.metrics).items(), key=lambda kv: natural_key(kv[0]))]
        n_test = d.metrics.get("n_problems")
        if n_test is not None:
            erow.append(["test problems", _fmt(n_test, 0)])
        h.append(_html_table(["", "accuracy"], erow))
        md.append(_md_table(["", "accuracy"], erow))
    h.append("</section>")
    return "\n".join(h), "\n".join(md)


def _by_level(metrics: dict) -> dict[str, float]:
    v = metrics.get("by_level")
    return {str(k): float(x["accuracy"]) for k, x in v.items()} if isinstance(v, dict) else {}


_CSS = """body{font-family:system-ui,sans-serif;max-width:1000px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:2px 8px;text-align:right}
td:first-child,th:first-child{text-align:left}img.plot{display:block;max-width:100%;margin:.5em 0}
section{border-top:2px solid #444;margin-top:2em}"""


def _page(title: str, body: str) -> str:
    t = html.escape(title)
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{t}</title>"
            f"<style>{_CSS}</style></head>\n<body>\n<h1>{t}</h1>\n{body}\n</body></html>\n")


def _img(b64: str, alt: str, ident: str) -> str:
    return f'<img class="plot" id="{ident}" alt="{html.escape(alt)}" src="data:image/png;base64,{b64}">'


def _html_table(head: list[str], rows: list[list[Any]]) -> str:
    th = "".join(f"<th>{html.escape(str(c))}</th>" for c in head)
    trs = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{th}</tr></thead><tbody>{trs}</tbody></table>"


def _md_table(head: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(str(c) for c in head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def _fmt(v: Any, digits: int = 3, sign: bool = False) -> str:
    if v is None or (isinstance(v, float) and not np.isfinite(v)):
        return "n/a" if v is None or np.isnan(v) else str(v)
    if isinstance(v, (int, float)):
        return f"{v:+.{digits}f}" if sign else f"{v:.{digits}f}"
    return str(v)
