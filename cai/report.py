"""``cai report RUN [RUN ...]``: one self-contained HTML page about runs and training folders.

The page needs nothing at view time (no CDN, font or script fetched): plots are matplotlib
figures inlined as SVG, the sample browser's data is inlined JSON and its script is inline.
A ``cai generate`` run directory gives its statistics (``cai.stats``, also written to
``report.json``), plots (revision funnel, per-principle outcomes, dropped revisions by reason,
chosen vs rejected lengths, judge margins, throughput) and its samples; a training output
folder gives its ``trainer_log.json`` curves. Several sources are shown side by side.
"""

from __future__ import annotations

import difflib
import html
import io
import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cai.errors import NotARunError, ReportError
from cai.records import Trace
from cai.stats import REPORT_JSON, run_stats
from cai.store import DB_NAME, RunStore

REPORT_HTML = "report.html"
TRAINER_LOG = "trainer_log.json"
MAX_SAMPLES = 400  # per run in the sample browser (the page stays small on big runs)
COLORS = {"chosen": "#2a7ab9", "rejected": "#d1603d", "kept": "#3a9d5d", "dropped": "#c44e52", "other": "#999999"}


# -- plots -----------------------------------------------------------------------------


def _figure(width: float = 5.2, height: float = 2.8):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"svg.fonttype": "path", "font.size": 8, "axes.spines.top": False, "axes.spines.right": False})
    return plt.subplots(figsize=(width, height))


def _svg(fig, name: str, title: str) -> str:
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    for ax in fig.axes:  # counts are whole numbers
        label = ax.get_xlabel() + ax.get_ylabel()
        if any(w in label for w in ("samples", "count", "rounds", "pairs")):
            (
                ax.xaxis
                if ax.get_xlabel() in ("samples", "count") or ax.get_xlabel().startswith("rounds")
                else ax.yaxis
            ).set_major_locator(MaxNLocator(integer=True))

    fig.suptitle(title, fontsize=9, x=0.02, ha="left")
    fig.tight_layout()
    buf = io.StringIO()
    fig.savefig(buf, format="svg")
    plt.close(fig)
    svg = buf.getvalue()
    svg = svg[svg.index("<svg") :]  # drop the XML prolog and doctype
    svg = re.sub(r"<metadata>.*?</metadata>", "", svg, flags=re.DOTALL)
    return f'<figure class="plot" data-plot="{html.escape(name)}">{svg}</figure>'


def _empty(name: str, title: str, why: str) -> str:
    fig, ax = _figure(height=1.2)
    ax.axis("off")
    ax.text(0.5, 0.5, why, ha="center", va="center", color="#666")
    return _svg(fig, name, title)


def plot_funnel(stats: dict[str, Any]) -> str:
    f = stats["funnel"]
    steps = [
        ("prompts", f["prompts"]),
        ("answered", f["answered"]),
        ("revised", f["revised"]),
        ("pairs written", f["pairs"]),
    ]
    fig, ax = _figure(height=2.0)
    names = [s for s, _ in steps][::-1]
    values = [v for _, v in steps][::-1]
    bars = ax.barh(names, values, color=[COLORS["kept"], "#6aa5d8", "#6aa5d8", "#6aa5d8"])
    ax.bar_label(bars, padding=2)
    ax.set_xlabel("samples")
    return _svg(fig, "funnel", "Revision funnel")


def plot_principles(stats: dict[str, Any]) -> str:
    table = stats["principles"]
    if not table:
        return _empty("principles", "Per principle", "no critique rounds ran")
    names = list(table)
    parts = {
        "revised": [table[n]["revised"] for n in names],
        "early stop": [table[n]["early_stopped"] for n in names],
        "unchanged": [table[n]["unchanged"] for n in names],
        "dropped": [sum(table[n]["degenerate"].values()) for n in names],
    }
    colors = {
        "revised": COLORS["kept"],
        "early stop": "#8c8cd9",
        "unchanged": COLORS["other"],
        "dropped": COLORS["dropped"],
    }
    fig, ax = _figure(height=max(2.0, 0.22 * len(names) + 0.8))
    left = [0] * len(names)
    for label, values in parts.items():
        ax.barh(names, values, left=left, label=label, color=colors[label])
        left = [a + b for a, b in zip(left, values)]
    ax.invert_yaxis()
    ax.set_xlabel("rounds (principle drawn)")
    ax.legend(fontsize=7, frameon=False, loc="lower right")
    return _svg(fig, "principles", "Per principle: what each critique round ended in")


def plot_dropped(stats: dict[str, Any]) -> str:
    reasons = {
        **{f"revision: {k}": v for k, v in stats["revisions"]["dropped"].items()},
        **{f"pair (judge): {k}": v for k, v in stats["pairs_not_kept"].items()},
        **{f"sample failed: {k}": v for k, v in stats["failed"].items()},
    }
    if stats["revisions"]["truncated_kept"]:
        reasons["revision kept, truncated"] = stats["revisions"]["truncated_kept"]
    if not reasons:
        return _empty("dropped", "Dropped or flagged, by reason", "nothing was dropped")
    fig, ax = _figure(height=max(1.6, 0.22 * len(reasons) + 0.8))
    items = sorted(reasons.items(), key=lambda kv: kv[1])
    bars = ax.barh([k for k, _ in items], [v for _, v in items], color=COLORS["dropped"])
    ax.bar_label(bars, padding=2)
    ax.set_xlabel("count")
    return _svg(fig, "dropped", "Dropped or flagged, by reason")


def plot_lengths(stats: dict[str, Any]) -> str:
    length = stats["length"]
    if not length["chosen_words"]:
        return _empty("lengths", "Length: chosen vs rejected", "no preference pairs")
    fig, ax = _figure()
    top = max(length["chosen_words"] + length["rejected_words"]) + 1
    bins = list(range(0, top + max(1, top // 20), max(1, top // 20)))
    ax.hist(length["rejected_words"], bins=bins, alpha=0.6, label="rejected (initial)", color=COLORS["rejected"])
    ax.hist(length["chosen_words"], bins=bins, alpha=0.6, label="chosen (revision)", color=COLORS["chosen"])
    ax.set_xlabel("words")
    ax.set_ylabel("pairs")
    ax.legend(fontsize=7, frameon=False)
    share = length["chosen_longer_share"]
    return _svg(fig, "lengths", f"Length: chosen vs rejected (chosen longer in {share:.0%} of pairs)")


def plot_margins(stats: dict[str, Any]) -> str:
    judge = stats["judge"]
    if not judge:
        return _empty("margins", "Judge margins", "no judge ran (cai generate --verify JUDGE)")
    if not judge["margins"]:
        return _empty("margins", "Judge margins", "the judge gave no readable verdict")
    fig, ax = _figure()
    ax.hist(judge["margins"], bins=[i / 10 for i in range(-10, 11)], color=COLORS["chosen"])
    ax.axvline(0, color="#333", lw=0.8)
    ax.set_xlabel("margin of the revision (p(revision) - p(initial))")
    ax.set_ylabel("pairs")
    return _svg(fig, "margins", f"Judge margins ({judge['kept']} of {judge['verified']} pairs kept)")


def plot_throughput(stats: dict[str, Any]) -> str:
    tp = stats["throughput"]
    if not tp["t"]:
        return _empty("throughput", "Throughput", "no timestamps recorded")
    fig, ax = _figure()
    per_s = [k / tp["bin_s"] for k in tp["completion_tokens"]]
    ax.plot(tp["t"], per_s, color=COLORS["chosen"], label="completion tokens/s")
    ax.set_xlabel("seconds since the first call")
    ax.set_ylabel("tokens/s")
    ax2 = ax.twinx()
    ax2.bar(tp["t"], tp["samples"], width=tp["bin_s"] * 0.8, alpha=0.3, color=COLORS["kept"], label="samples done")
    ax2.set_ylabel("samples per bin")
    return _svg(fig, "throughput", "Throughput over time")


def plot_training(log: list[dict[str, Any]], name: str) -> list[str]:
    """Loss (train / eval) and, where logged, reward margin and accuracy by step."""
    plots = []
    groups = [
        ("loss", ["loss", "eval_loss"]),
        ("rewards", ["rewards/margins", "eval_rewards/margins", "rewards/accuracies", "eval_rewards/accuracies"]),
    ]
    for title, keys in groups:
        series = {k: [(e["step"], e[k]) for e in log if k in e and "step" in e] for k in keys}
        series = {k: v for k, v in series.items() if v}
        if not series:
            continue
        fig, ax = _figure()
        for key, points in series.items():
            ax.plot([p[0] for p in points], [p[1] for p in points], marker="." if len(points) < 30 else None, label=key)
        ax.set_xlabel("step")
        ax.legend(fontsize=7, frameon=False)
        plots.append(_svg(fig, f"training-{title}", f"{name}: {title}"))
    if not plots:
        plots.append(_empty("training-loss", f"{name}: training", "trainer_log.json has no loss entries"))
    return plots


# -- samples ---------------------------------------------------------------------------


def word_diff(before: str, after: str) -> str:
    """HTML of ``after`` with the words added since ``before`` in <ins> and removed in <del>."""
    a, b = re.findall(r"\S+|\s+", before), re.findall(r"\S+|\s+", after)
    out = []
    for op, i1, i2, j1, j2 in difflib.SequenceMatcher(None, a, b, autojunk=False).get_opcodes():
        if op in ("delete", "replace"):
            out.append(f"<del>{html.escape(''.join(a[i1:i2]))}</del>")
        if op in ("insert", "replace"):
            out.append(f"<ins>{html.escape(''.join(b[j1:j2]))}</ins>")
        if op == "equal":
            out.append(html.escape("".join(a[i1:i2])))
    return "".join(out)


def sample_outcome(trace: Trace) -> str:
    """The sample's one filterable outcome: kept, judge:<reason>, early_stop, unchanged, failed:<reason>."""
    if not trace.ok:
        return f"failed:{trace.error}"
    verify = trace.metadata.get("verify")
    if trace.revised:
        return "pair kept" if not verify or verify.get("kept") else f"judge:{verify.get('reason')}"
    return "early_stop" if trace.stop_reason == "early_stop" else "no usable revision"


def sample_view(trace: Trace) -> dict[str, Any]:
    steps, current = [], trace.initial
    for s in trace.steps:
        step = {
            "principle": s.principle,
            "critique": s.critique,
            "note": s.note or ("accepted" if s.accepted else ""),
            "accepted": s.accepted,
        }
        if s.revision is not None:
            step["diff"] = word_diff(current, s.revision)
        if s.accepted:
            current = s.revision or current
        steps.append(step)
    prompt = next((m["content"] for m in reversed(trace.prompt) if m["role"] == "user"), "")
    return {
        "id": trace.id,
        "prompt": prompt,
        "initial": trace.initial,
        "final": trace.final,
        "steps": steps,
        "outcome": sample_outcome(trace),
        "reasons": sorted(
            {s.note.split(":", 1)[1] for s in trace.steps if s.note.startswith("degenerate")}
            | ({"truncated"} if any(s.note == "truncated" for s in trace.steps) else set())
        ),
        "principles": sorted({s.principle for s in trace.steps}),
        "verify": {k: v for k, v in (trace.metadata.get("verify") or {}).items() if k != "details"} or None,
    }


def _run_samples(run_dir: Path) -> tuple[list[dict[str, Any]], int]:
    with RunStore(run_dir, read_only=True) as store:
        rows = list(store.samples())
    traces = [
        Trace.from_dict(r.record)
        if r.record and "prompt" in r.record
        else Trace(id=r.id, prompt=[], stop_reason="failed", error=r.reason)
        for r in rows
    ]
    return [sample_view(t) for t in traces[:MAX_SAMPLES]], len(traces)


# -- the page --------------------------------------------------------------------------


def _source(path: Path) -> dict[str, Any]:
    if (path / DB_NAME).exists():
        stats = run_stats(path)
        (path / REPORT_JSON).write_text(json.dumps(stats, indent=1, ensure_ascii=False), encoding="utf-8")
        samples, total = _run_samples(path)
        return {
            "kind": "run",
            "name": path.name or str(path),
            "path": str(path),
            "stats": stats,
            "samples": samples,
            "total_samples": total,
        }
    if (path / TRAINER_LOG).exists():
        try:
            log = json.loads((path / TRAINER_LOG).read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise ReportError(f"{path / TRAINER_LOG}: not JSON (line {exc.lineno}: {exc.msg})") from None
        if not isinstance(log, list):
            raise ReportError(f"{path / TRAINER_LOG}: expected a list of log entries")
        return {"kind": "training", "name": path.name, "path": str(path), "log": log}
    if not path.exists():
        raise ReportError(f"{path}: no such folder")
    raise ReportError(f"{path}: neither a cai run directory ({DB_NAME}) nor a training folder ({TRAINER_LOG})")


def _headline(stats: dict[str, Any]) -> str:
    f = stats["funnel"]

    def listed(counts: dict[str, int]) -> str:
        return ", ".join(f"{k} {v}" for k, v in sorted(counts.items(), key=lambda kv: -kv[1])) or "none"

    failed = sum(stats["failed"].values())
    judged = f" Pairs left out by the judge: {html.escape(listed(stats['pairs_not_kept']))}." if stats["judge"] else ""
    return (
        f'<p class="headline"><b class="kept">{f["pairs"]} preference pairs kept</b> of {f["prompts"]} prompts '
        f"({f['answered']} SFT rows, {failed} samples failed). Revisions dropped: "
        f"{html.escape(listed(stats['revisions']['dropped']))}.{judged}</p>"
    )


def _figures_table(stats: dict[str, Any]) -> str:
    length, judge, dup = stats["length"], stats["judge"], stats["duplicates"]
    usage = stats["usage"]

    def pct(x: float | None) -> str:
        return "-" if x is None else f"{x:.0%}"

    def num(x: float | None) -> str:
        return "-" if x is None else f"{x:.2f}"

    rows = [
        ("length bias: chosen longer", pct(length["chosen_longer_share"])),
        ("mean length ratio chosen/rejected", num(length["mean_length_ratio"])),
        ("early stopped samples", str(stats["early_stopped"])),
        ("revisions kept truncated", str(stats["revisions"]["truncated_kept"])),
        ("judge consistency (both orders agree)", pct(judge["consistency"]) if judge else "no judge"),
        ("judge position bias (first shown wins)", pct(judge["first_position_share"]) if judge else "no judge"),
        ("near-duplicate prompt clusters (largest)", f"{dup['prompts']['clusters']} ({dup['prompts']['largest']})"),
        ("near-duplicate chosen clusters (largest)", f"{dup['chosen']['clusters']} ({dup['chosen']['largest']})"),
        (
            "refusal share: chosen / rejected",
            f"{pct(stats['refusal_share']['chosen'])} / {pct(stats['refusal_share']['rejected'])}",
        ),
        ("tokens prompt / completion", f"{usage['prompt_tokens']} / {usage['completion_tokens']}"),
        ("model calls / cached calls", f"{usage['model_calls']} / {usage['cached_calls']}"),
    ]
    body = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in rows)
    return f'<table class="figures">{body}</table>'


def _run_section(src: dict[str, Any]) -> str:
    stats = src["stats"]
    plots = [
        plot_funnel(stats),
        plot_dropped(stats),
        plot_principles(stats),
        plot_lengths(stats),
        plot_margins(stats),
        plot_throughput(stats),
    ]
    config = stats["config"]
    return (
        f'<section class="source run"><h2>{html.escape(src["name"])}</h2>'
        f'<p class="meta">{html.escape(src["path"])} · model <code>{html.escape(str(config.get("model")))}</code> · '
        f"constitution <code>{html.escape(str(config.get('constitution')))}</code></p>"
        f"{_headline(stats)}{_figures_table(stats)}{''.join(plots)}</section>"
    )


def _training_section(src: dict[str, Any]) -> str:
    return (
        f'<section class="source training"><h2>{html.escape(src["name"])} (training)</h2>'
        f'<p class="meta">{html.escape(src["path"])} · {len(src["log"])} log entries</p>'
        f"{''.join(plot_training(src['log'], src['name']))}</section>"
    )


def _comparison(sources: list[dict[str, Any]]) -> str:
    runs = [s for s in sources if s["kind"] == "run"]
    if len(runs) < 2:
        return ""
    keys = [
        ("prompts", lambda s: s["funnel"]["prompts"]),
        ("pairs kept", lambda s: s["funnel"]["pairs"]),
        ("revised", lambda s: s["funnel"]["revised"]),
        ("early stopped", lambda s: s["early_stopped"]),
        ("revisions dropped", lambda s: sum(s["revisions"]["dropped"].values())),
        (
            "chosen longer",
            lambda s: (
                "-" if s["length"]["chosen_longer_share"] is None else f"{s['length']['chosen_longer_share']:.0%}"
            ),
        ),
        ("failed", lambda s: sum(s["failed"].values())),
    ]
    head = "".join(f"<th>{html.escape(r['name'])}</th>" for r in runs)
    body = "".join(f"<tr><th>{k}</th>" + "".join(f"<td>{f(r['stats'])}</td>" for r in runs) + "</tr>" for k, f in keys)
    return f'<section class="compare"><h2>Runs side by side</h2><table class="figures"><tr><th></th>{head}</tr>{body}</table></section>'


_CSS = """
body{font:14px/1.45 system-ui,sans-serif;margin:1.5em;color:#222;max-width:none}
h1{font-size:1.4em}h2{font-size:1.15em;margin:.2em 0}
.sources{display:grid;grid-template-columns:repeat(auto-fit,minmax(520px,1fr));gap:1.2em}
.source{border:1px solid #ddd;border-radius:6px;padding:.8em}
.plot{margin:.4em 0}.plot svg{max-width:100%;height:auto}
.headline{font-size:1.05em}.kept{color:#2e7d4f}.meta{color:#666;font-size:.9em}
table.figures{border-collapse:collapse;margin:.5em 0}table.figures th,table.figures td{border-bottom:1px solid #eee;padding:2px 8px;text-align:left}
#browser .filters{display:flex;gap:1em;flex-wrap:wrap;margin:.5em 0}
.sample{border:1px solid #ddd;border-radius:6px;padding:.5em .8em;margin:.6em 0}
.sample .prompt{font-weight:600}.sample .outcome{float:right;font-size:.85em;padding:1px 6px;border-radius:4px;background:#eee}
.sample[data-outcome="pair kept"] .outcome{background:#d7f0df}
.text{white-space:pre-wrap;background:#fafafa;padding:.3em .5em;border-radius:4px;margin:.2em 0}
ins{background:#d7f0df;text-decoration:none}del{background:#f8d7d7}
.step{margin-left:1em;border-left:3px solid #ddd;padding-left:.6em}.step.dropped{border-color:#c44e52}.step.accepted{border-color:#3a9d5d}
.label{color:#666;font-size:.85em}
"""

_JS = r"""
(function(){
  const data = JSON.parse(document.getElementById('samples-data').textContent);
  const list = document.getElementById('samples');
  const esc = s => String(s).replace(/[&<>"]/g, c => ({'&':'&amp;','<':'&lt;','>':'&gt;','"':'&quot;'}[c]));
  const fill = (id, values) => { const el = document.getElementById(id);
    [...new Set(values)].sort().forEach(v => { const o = document.createElement('option'); o.value = v; o.textContent = v; el.appendChild(o); }); };
  fill('f-run', data.map(s => s.run));
  fill('f-principle', data.flatMap(s => s.principles));
  fill('f-outcome', data.map(s => s.outcome));
  fill('f-reason', data.flatMap(s => s.reasons));
  data.forEach(s => {
    const el = document.createElement('div');
    el.className = 'sample';
    el.dataset.run = s.run; el.dataset.outcome = s.outcome;
    el.dataset.principles = '|' + s.principles.join('|') + '|';
    el.dataset.reasons = '|' + s.reasons.join('|') + '|';
    let h = `<span class="outcome">${esc(s.outcome)}</span><div class="label">${esc(s.run)} · ${esc(s.id)}</div>`;
    h += `<div class="prompt">${esc(s.prompt)}</div><div class="label">initial answer</div><div class="text">${esc(s.initial)}</div>`;
    s.steps.forEach((st, i) => {
      const cls = st.accepted ? 'accepted' : (st.note.startsWith('degenerate') ? 'dropped' : '');
      h += `<div class="step ${cls}"><div class="label">round ${i + 1}: ${esc(st.principle)} · ${esc(st.note || '')}</div>`;
      h += `<div class="label">critique</div><div class="text">${esc(st.critique)}</div>`;
      if (st.diff !== undefined) h += `<div class="label">revision (word diff against the answer it revises)</div><div class="text">${st.diff}</div>`;
      h += '</div>';
    });
    if (s.verify) h += `<div class="label">judge: ${esc(JSON.stringify(s.verify))}</div>`;
    el.innerHTML = h;
    list.appendChild(el);
  });
  const apply = () => {
    const run = document.getElementById('f-run').value, pr = document.getElementById('f-principle').value;
    const oc = document.getElementById('f-outcome').value, re = document.getElementById('f-reason').value;
    let shown = 0;
    list.querySelectorAll('.sample').forEach(el => {
      const ok = (!run || el.dataset.run === run) && (!pr || el.dataset.principles.includes('|' + pr + '|'))
        && (!oc || el.dataset.outcome === oc) && (!re || el.dataset.reasons.includes('|' + re + '|'));
      el.style.display = ok ? '' : 'none'; shown += ok;
    });
    document.getElementById('shown').textContent = `showing ${shown} of ${data.length} samples`;
  };
  document.querySelectorAll('#browser select').forEach(el => el.addEventListener('change', apply));
  apply();
})();
"""


def render_report(paths: Sequence[str | Path]) -> str:
    """The report page for run directories and/or training folders."""
    if not paths:
        raise ReportError("give at least one run directory or training folder")
    try:
        sources = [_source(Path(p)) for p in paths]
    except NotARunError as exc:
        raise ReportError(str(exc)) from None
    sections = [_run_section(s) if s["kind"] == "run" else _training_section(s) for s in sources]
    samples = [{**v, "run": s["name"]} for s in sources if s["kind"] == "run" for v in s["samples"]]
    note = "".join(
        f'<p class="meta">{html.escape(s["name"])}: the first {len(s["samples"])} of {s["total_samples"]} samples</p>'
        for s in sources
        if s["kind"] == "run" and s["total_samples"] > len(s["samples"])
    )
    browser = ""
    if samples:
        selects = "".join(
            f'<label>{label} <select id="f-{key}"><option value="">all</option></select></label>'
            for key, label in (
                ("run", "run"),
                ("principle", "principle"),
                ("outcome", "outcome"),
                ("reason", "dropped / flagged for"),
            )
        )
        payload = json.dumps(samples, ensure_ascii=False).replace("</", "<\\/")
        browser = (
            f'<section id="browser"><h2>Samples</h2>{note}<div class="filters">{selects}<span id="shown"></span></div>'
            f'<div id="samples"></div><script type="application/json" id="samples-data">{payload}</script>'
            f"<script>{_JS}</script></section>"
        )
    title = "cai report: " + ", ".join(s["name"] for s in sources)
    return (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{_CSS}</style></head><body><h1>{html.escape(title)}</h1>{_comparison(sources)}"
        f'<div class="sources">{"".join(sections)}</div>{browser}</body></html>'
    )


def write_report(paths: Sequence[str | Path], out: str | Path | None = None) -> Path:
    """Write the report page; default path: ``RUN/report.html`` for one source, else
    ``report.html`` in the current directory."""
    page = render_report(paths)
    target = Path(out) if out is not None else (Path(paths[0]) / REPORT_HTML if len(paths) == 1 else Path(REPORT_HTML))
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(page, encoding="utf-8")
    return target
