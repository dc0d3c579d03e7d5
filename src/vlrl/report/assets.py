"""The report's stylesheet and script, inlined into the page (the report must work offline).

The script only filters and sorts the viewer's server-rendered elements: it reads numbers from
`data-*` attributes and toggles `hidden`; it never turns data into HTML.
"""

CSS = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 0 auto; max-width: 1400px; padding: 0 16px 40px; color: #222; }
header { border-bottom: 1px solid #ddd; margin-bottom: 8px; }
nav a { margin-right: 12px; }
h2 { margin-top: 28px; border-bottom: 1px solid #eee; }
h3 { margin: 18px 0 6px; color: #444; }
section.group { display: inline-block; vertical-align: top; margin-right: 14px; }
.empty { color: #777; font-style: italic; }
.skipped { color: #a15c00; }
.charts { display: flex; flex-wrap: wrap; gap: 10px; }
figure.chart { margin: 0; padding: 6px; border: 1px solid #e4e4e4; border-radius: 4px; width: 400px; }
figure.chart figcaption { font-weight: 600; font-size: 13px; overflow-wrap: anywhere; }
svg.plot { display: block; max-width: 100%; height: auto; }
svg.plot .grid { stroke: #eee; }
svg.plot .tick { font-size: 10px; fill: #666; }
.legend { font-size: 12px; display: flex; flex-wrap: wrap; gap: 4px 10px; }
.legend i { display: inline-block; width: 10px; height: 10px; margin-right: 4px; border-radius: 2px; }
dl.facts { display: grid; grid-template-columns: max-content 1fr; gap: 2px 14px; margin: 6px 0 12px; }
dl.facts dt { font-weight: 600; }
dl.facts dd { margin: 0; overflow-wrap: anywhere; }
table.summary, details.constants table { border-collapse: collapse; }
table.summary td, table.summary th, details.constants td { border: 1px solid #ddd; padding: 2px 8px; text-align: left; }
table.summary small { color: #777; }
table.summary td.na { color: #999; }
.note { font-size: 12.5px; color: #666; }
details.constants { margin-top: 14px; }
details.constants summary { cursor: pointer; font-weight: 600; color: #444; }
table.alarms { border-collapse: collapse; }
table.alarms td, table.alarms th { border: 1px solid #ddd; padding: 3px 8px; text-align: left; vertical-align: top; }
tr.critical td { background: #fde8e8; }
tr.warning td { background: #fff6dd; }
.controls { position: sticky; top: 0; background: #fafafa; border: 1px solid #ddd; padding: 6px 8px; z-index: 1;
  display: flex; flex-wrap: wrap; gap: 8px; align-items: center; }
article.rollout { border: 1px solid #ddd; border-radius: 4px; margin: 10px 0; padding: 6px 10px; }
article.rollout h4 { margin: 2px 0 6px; }
.prompt-row { display: flex; gap: 12px; align-items: flex-start; }
.images { display: flex; flex-direction: column; gap: 4px; max-width: 260px; }
.images img { max-width: 256px; max-height: 256px; border: 1px solid #ccc; }
#rv-value { width: 6em; }
.texts { flex: 1; min-width: 0; }
.label { font-size: 12px; color: #666; text-transform: uppercase; }
pre { white-space: pre-wrap; overflow-wrap: anywhere; margin: 2px 0 6px; max-height: 16em; overflow: auto;
  background: #f6f6f6; padding: 4px 6px; font-size: 12.5px; }
.resp { border-left: 4px solid #bbb; margin: 6px 0; padding-left: 8px; }
.resp.pos { border-color: #2a9d55; }
.resp.neg { border-color: #d1495b; }
.meta { font-size: 12.5px; }
.meta .idx { color: #888; }
.meta .scores { color: #555; margin-left: 8px; }
.finish.length { color: #b00; font-weight: 600; }
.missing { color: #b00; font-size: 12px; }
"""

JS = """
(function () {
  const $ = (id) => document.getElementById(id);
  const controls = ["rv-step", "rv-key", "rv-op", "rv-value", "rv-sort"].map($);
  if (controls.some((c) => !c)) return;
  const groups = Array.from(document.querySelectorAll("article.rollout"));
  const num = (el, key) => (key in el.dataset ? parseFloat(el.dataset[key]) : NaN);
  function apply() {
    const [step, key, op, value, order] = controls.map((c) => c.value);
    const limit = parseFloat(value);
    let shown = 0, total = 0;
    for (const group of groups) {
      group.hidden = !(step === "all" || group.dataset.step === step);
      if (group.hidden) continue;
      const list = group.querySelector(".responses");
      const items = Array.from(list.children);
      // Missing values sort last either way.
      const sortKey = (el) => {
        const v = num(el, key);
        return isNaN(v) ? Infinity : order === "desc" ? -v : v;
      };
      const rank = order === "sampled" ? (el) => Number(el.dataset.index) : sortKey;
      items.sort((a, b) => {
        const x = rank(a), y = rank(b);
        return x === y ? 0 : x < y ? -1 : 1;
      });
      for (const item of items) {
        list.appendChild(item);
        const v = num(item, key);
        const keep = op === "any" || (op === "ge" ? v >= limit : v < limit);
        item.hidden = !keep;
        total += 1;
        shown += keep ? 1 : 0;
      }
    }
    $("rv-count").textContent = shown + " of " + total + " responses shown";
  }
  // A view can be linked: report.html#step=all&key=total&op=ge&value=1&sort=desc
  const preset = new URLSearchParams(location.hash.slice(1));
  for (const c of controls) {
    const wanted = preset.get(c.id.slice(3));
    if (wanted !== null) c.value = wanted;
    for (const kind of ["input", "change"]) c.addEventListener(kind, apply);
  }
  apply();
})();
"""
