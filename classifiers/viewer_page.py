"""The HTML, CSS and vanilla JS of the ``view`` page (``classifiers.viewer``): no network, opens from ``file://``.

``render_page`` puts the prepared subject timelines and pair cards into one page with its filters: label,
split, a run of the dataset and whether that run's prediction was right. The runs' predictions travel
as JSON inside the page; nothing is fetched.
"""

from __future__ import annotations

import html
import json

__all__ = ["render_page"]

_STYLE = """body{font-family:sans-serif;margin:1em 2em;color:#222}
header{border-bottom:1px solid #ccc;padding:.4em 0}
label{margin-right:1em}select{margin-left:.3em}
.subject{border:1px solid #ddd;margin:.5em 0;padding:.3em .6em}.subject h3{margin:.2em 0;font-size:1em}
.timeline{display:flex;gap:.8em;overflow-x:auto}.tp{display:grid;grid-template-columns:repeat(3,46px);gap:1px;
align-content:start}.tp .t{grid-column:1/-1;font-size:.8em;color:#555;text-align:center}.tp img{width:46px;height:46px}
#pairs{display:flex;flex-wrap:wrap;gap:.6em}
.pair{border:1px solid #ddd;padding:.3em;width:310px}
.pair img{width:96px;height:96px;margin-right:2px;border:1px solid #ccc}
.pair p{margin:.2em 0;font-size:.8em}.fv{color:#555}.lab{color:#555;font-weight:normal}
.right{color:#1a7f37}.wrong{color:#c62828;font-weight:bold}[hidden]{display:none!important}"""

_SCRIPT = """
const RUNS = JSON.parse(document.getElementById('runs').textContent);
const $ = (id) => document.getElementById(id);
function statusOf(run, key, subject) {
  if (!run) return null;
  const u = run.units[key];
  if (u) {
    const text = 'predicted ' + u[0] + ' (true ' + u[1] + ', ' + u[2] + ')';
    return {status: u[3] ? 'right' : 'wrong', split: u[2], text: text};
  }
  const s = run.subjects[subject];
  return s ? {status: s[0], split: s[1], text: ''} : {status: 'none', split: '', text: ''};
}
function keep(el, info, lab, sp, ok) {
  const labels = el.dataset.labels.split('|');
  const split = info && info.split ? info.split : el.dataset.split;
  const status = info ? info.status : 'none';
  return (!lab || labels.includes(lab)) && (!sp || split.split(',').includes(sp)) && (!ok || status === ok);
}
function apply() {
  const lab = $('f-label').value, sp = $('f-split').value, ok = $('f-right').value;
  const run = $('f-run').value === '' ? null : RUNS[Number($('f-run').value)];
  $('f-right').disabled = !run;
  let subjects = 0, pairs = 0;
  for (const el of document.querySelectorAll('.subject')) {
    const info = statusOf(run, '', el.dataset.subject);
    const shown = keep(el, info, lab, sp, run ? ok : '');
    el.hidden = !shown; subjects += shown;
    const st = el.querySelector('.st');
    st.textContent = info && info.status !== 'none' ? info.status + ' (' + info.split + ')' : '';
    st.className = 'st ' + (info ? info.status : '');
  }
  for (const el of document.querySelectorAll('.pair')) {
    const info = statusOf(run, el.dataset.key, el.dataset.subject);
    const shown = keep(el, info, lab, sp, run ? ok : '');
    el.hidden = !shown; pairs += shown;
    const pred = el.querySelector('.pred');
    pred.textContent = info ? info.text : '';
    pred.className = 'pred ' + (info ? info.status : '');
  }
  $('count').textContent = subjects + ' subjects, ' + pairs + ' pairs shown';
}
RUNS.forEach((run, i) => $('f-run').add(new Option(run.title, String(i))));
for (const id of ['f-label', 'f-split', 'f-run', 'f-right']) $(id).addEventListener('change', apply);
apply();
"""


def _options(values: list[str]) -> str:
    return "".join(f'<option value="{html.escape(v)}">{html.escape(v)}</option>' for v in values)


def render_page(*, dataset: str, subjects: list[str], pairs: list[str], runs: list[dict], labels: list[str]) -> str:
    """The whole page: ``subjects`` (timeline rows) and ``pairs`` (cards) as HTML fragments, ``runs`` (the
    viewer's run payloads: id, title, units, subjects) embedded as JSON, ``labels`` for the label filter."""
    data = json.dumps(runs, separators=(",", ":")).replace("</", "<\\/")
    name = html.escape(dataset)
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>chronofeat view: {name}</title>
<style>{_STYLE}</style></head><body>
<header><h1>Dataset {name}</h1>
<label>label<select id="f-label"><option value="">all</option>{_options(labels)}</select></label>
<label>split<select id="f-split"><option value="">all</option>{_options(["train", "val", "test"])}</select></label>
<label>run<select id="f-run"><option value="">none</option></select></label>
<label>prediction<select id="f-right"><option value="">all</option><option value="right">right</option>
<option value="wrong">wrong</option><option value="none">not predicted</option></select></label>
<span id="count"></span>
<p class="lab">Subjects are pseudonyms (keyed hashes), never patient IDs. Difference images: red where the comparison
is brighter, blue where darker, scaled per image. With a run chosen, split and prediction are that run's (its first
seed's test prediction, else out-of-fold CV).</p></header>
<h2>Subjects ({len(subjects)})</h2>
<section id="subjects">{"".join(subjects)}</section>
<h2>Pairs ({len(pairs)})</h2>
<section id="pairs">{"".join(pairs)}</section>
<script type="application/json" id="runs">{data}</script>
<script>{_SCRIPT}</script>
</body></html>
"""
