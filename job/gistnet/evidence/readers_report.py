"""The reader study's documents: readers.json (schema-checked), readers.md, readers.html, readers_roc.png.

One list of blocks (headings, paragraphs, tables) is built from readers.json and rendered twice,
as Markdown and as a self-contained HTML page (no script, no request: a Content-Security-Policy
forbids any; text from the file is escaped), so the two never say different things.
"""

from __future__ import annotations

import base64
import html
import json
import math
from importlib import resources

from gistnet.evidence import checklist, stats

SCHEMA_ID = "gistnet.readers/1"
ANALYSES = {
    "rrrc": "Random readers, random cases (the result generalises to both populations)",
    "frrc": "Fixed readers, random cases (these readers only)",
    "rrfc": "Random readers, fixed cases (these cases only)",
}
READING = (
    "How to read this: each reader's AUC uses their ratings, their sensitivity and specificity their calls. "
    "The modality comparison is the Obuchowski-Rockette analysis with Hillis' degrees of freedom (Hillis 2007; "
    "as in the Iowa OR-DBM MRMC software and the R packages MRMCaov and RJafroc): the random-readers, "
    "random-cases row is the one that applies to other readers and other cases. A large p is no evidence of "
    "a difference, never evidence that the modalities are equivalent."
)


def validate(document: dict) -> None:
    """Raise jsonschema's ValidationError when ``document`` does not match readers.schema.json."""
    import jsonschema

    schema = json.loads(resources.files("gistnet").joinpath("schemas/readers.schema.json").read_text())
    jsonschema.validate(document, schema)


def _cell(m: dict | None, percent: bool) -> str:
    return "n/a" if not m else stats.value_with_interval(m, percent)


def _p(p) -> str:
    return "n/a" if p is None else ("< 0.001" if p < 0.001 else f"{p:.3f}")


def _df(df) -> str:
    return "inf (z)" if df is None else f"{df:.2f}"


def _design(doc: dict) -> list:
    d = doc["design"]
    lines = [f"{len(d['readers'])} readers x {len(d['modalities'])} modalities ({', '.join(d['modalities'])}) x "
             f"{d['cases']} cases ({d['positive']} {doc['classes']['positive']}, {d['negative']} "
             f"{doc['classes']['negative']}); fully crossed. Unit of analysis: {d['unit_of_analysis']}.",
             f"Readers file: {doc['readers_file']}."]
    if doc.get("run"):
        ex = doc["excluded"]
        lines.append(f"Model: run {doc['run']} scored the cases of {doc['data']} as `gistnet evaluate` does "
                     f"(thresholds frozen; {ex['development_cases']} development images left out of every analysis; "
                     f"its report: {doc['model_evaluation']}).")
    else:
        lines.append("No model: the readers alone (truth from the readers file).")
    return [("h1", "Reader study"), *[("p", line) for line in lines]]


def _readers(doc: dict) -> list:
    rows = [[r["reader"], r["modality"], _cell(r.get("auc"), False), _cell(r.get("sensitivity"), True),
             _cell(r.get("specificity"), True)] for r in doc["per_reader"]]
    return [("h2", "Each reader"), ("table", ["reader", "modality", "AUC (95% CI)", "sensitivity", "specificity"],
                                    rows)]


def _or(doc: dict) -> list:
    section = doc["or"]
    blocks = [("h2", "Modalities compared (Obuchowski-Rockette, Hillis)")]
    if not section["available"]:
        return blocks + [("p", section["note"])]
    if section.get("note"):
        blocks.append(("p", section["note"]))
    blocks.append(("p", f"Figure of merit: {section['figure_of_merit']}; covariances: {section['covariance']}."))
    rows = []
    for key, title in ANALYSES.items():
        a = section[key]
        if a["statistic"] is None:
            rows.append([title, "n/a", "", "", "", a.get("note") or ""])
            continue
        stat = f"{'F' if a['distribution'] == 'F' else 'X2'} = {a['statistic']:.3f}"
        diff = "; ".join(f"{d['a']} - {d['b']}: {d['difference']:+.4f} ({d['ci_low']:+.4f} to {d['ci_high']:+.4f})"
                         for d in a["differences"])
        rows.append([title, stat, f"{a['ndf']:.0f}", _df(a["ddf"]), _p(a["p"]), diff])
    blocks.append(("table", ["analysis", "statistic", "ndf", "ddf", "p", "difference (95% CI)"], rows))
    rrrc = section["rrrc"]
    if rrrc["modalities"]:
        blocks.append(("table", ["modality", "reader-averaged AUC", "95% CI (random readers and cases)", "df"],
                       [[m["modality"], f"{m['auc']:.4f}", f"{m['ci_low']:.4f} to {m['ci_high']:.4f}", _df(m["df"])]
                        for m in rrrc["modalities"]]))
    return blocks


def _model(doc: dict) -> list:
    model = doc.get("model")
    if not model:
        return []
    blocks = [("h2", f"The model ({model['name']}) against the readers"),
              ("p", f"Model ROC AUC on these cases: {_cell(model['auc'], False)}.")]
    for modality, part in model["by_modality"].items():
        if "auc" in part:
            a = part["auc"]
            blocks.append(("p", f"{modality}: model AUC {a['model_auc']:.3f} vs readers' mean {a['readers_auc']:.3f}, "
                                f"difference {a['difference']:+.3f} ({a['ci_low']:+.3f} to {a['ci_high']:+.3f}), "
                                f"F({a['ndf']:.0f}, {_df(a['ddf'])}) = {a['statistic']:.2f}, p = {_p(a['p'])}. "
                                f"Method: {a['method']}."))
        for point in part.get("operating_points", []):
            rows = [[v["reader"], f"{v['sensitivity']['difference']:+.3f}", _p(v["sensitivity"]["p"]),
                     f"{v['specificity']['difference']:+.3f}", _p(v["specificity"]["p"])]
                    for v in point["versus_readers"]]
            blocks.append(("p", f"{modality}, model at {point['threshold_name']}: sensitivity "
                                f"{_cell(point['sensitivity'], True)}, specificity {_cell(point['specificity'], True)}"))
            blocks.append(("table", ["reader", "sensitivity difference (model - reader)", "p",
                                     "specificity difference", "p"], rows))
    return blocks


def _items(doc: dict) -> list:
    """The reporting items this study fills (and the ones only its authors can)."""
    rows = [[checklist.claim(28, 29), "each reader's AUC, sensitivity and specificity; the Obuchowski-Rockette "
                                      "analyses; paired tests against each reader"],
            [checklist.claim(37, 38), "every estimate with its 95% interval, clustered by patient when patients "
                                      "repeat"],
            ["TRIPOD+AI 12e", "model comparison: the model against the readers, readers with and without it"],
            [checklist.claim(16, 18), "the authors': who the readers are (experience, training), how they were "
                                      "blinded, the reading order and washout; the readers' variability is in the "
                                      "table of each reader"]]
    if not doc.get("model"):
        rows.pop(2)
    return [("h2", "Reporting items (CLAIM 2024, TRIPOD+AI)"), ("table", ["item", "where"], rows)]


def blocks(doc: dict) -> list:
    return [*_design(doc), *_readers(doc), *_or(doc), *_model(doc), *_items(doc), ("p", READING)]


def markdown(doc: dict) -> str:
    out = []
    for kind, *rest in blocks(doc):
        if kind in ("h1", "h2"):
            out.append(("# " if kind == "h1" else "## ") + rest[0])
        elif kind == "p":
            out.append(rest[0])
        else:
            header, rows = rest
            out.append("\n".join(["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
                                 + ["| " + " | ".join(map(str, r)) + " |" for r in rows]))
    return "\n\n".join(out) + "\n"


def page(doc: dict, figure: bytes | None) -> str:
    e = html.escape
    body = []
    for kind, *rest in blocks(doc):
        if kind in ("h1", "h2"):
            body.append(f"<{kind}>{e(rest[0])}</{kind}>")
        elif kind == "p":
            body.append(f"<p>{e(rest[0])}</p>")
        else:
            header, rows = rest
            head = "".join(f"<th>{e(h)}</th>" for h in header)
            cells = "".join("<tr>" + "".join(f"<td>{e(str(c))}</td>" for c in r) + "</tr>" for r in rows)
            body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{cells}</tbody></table>")
    if figure:
        src = "data:image/png;base64," + base64.b64encode(figure).decode()
        body.insert(1, f'<figure><img src="{src}" alt="ROC curve of the model with each reader\'s operating point">'
                       "<figcaption>The model's ROC curve with each reader's operating point; an arrow joins a "
                       "reader's unaided and aided points.</figcaption></figure>")
    return ("<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; img-src data:; "
            "style-src 'unsafe-inline'\"><title>gistnet reader study</title><style>body{font-family:sans-serif;"
            "max-width:60em;margin:auto}table{border-collapse:collapse}td,th{border:1px solid #999;padding:2px 6px}"
            "img{max-width:100%}</style></head><body>" + "".join(body) + "</body></html>\n")


def figure(doc: dict, path) -> None:
    """The model's ROC curve with each reader's operating point, unaided -> aided as an arrow."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from gistnet.plots import save_plot

    fig, ax = plt.subplots(figsize=(5.5, 5.5))
    if doc.get("model"):
        roc = doc["model"]["roc"]
        ax.plot(roc["fpr"], roc["tpr"], color="black", label=f"model ({doc['model']['name']})")
    markers = "os^Dv<>"
    modalities = doc["design"]["modalities"]
    for n, (reader, points) in enumerate(doc["reader_points"].items()):
        colour = plt.cm.tab10(n % 10)
        xy = [(points[m]["fpr"], points[m]["tpr"]) for m in modalities]
        for i, (x, y) in enumerate(xy):
            ax.scatter([x], [y], color=colour, marker=markers[i % len(markers)],
                       label=f"{reader}, {modalities[i]}" if n < 10 else None)
        for (x0, y0), (x1, y1) in zip(xy, xy[1:]):
            if math.hypot(x1 - x0, y1 - y0) > 1e-9:
                ax.annotate("", xy=(x1, y1), xytext=(x0, y0), arrowprops={"arrowstyle": "->", "color": colour})
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
    ax.set_xlim(-0.02, 1.02)
    ax.set_ylim(-0.02, 1.02)
    save_plot(fig, ax, path, "Model and readers", "1 - specificity", "sensitivity", "lower right")


def write(out, doc: dict) -> None:
    """Every document into ``out``; readers.json last (it marks the study complete)."""
    import tempfile

    png = None
    if doc["reader_points"] or doc.get("model"):
        out.upload_drawn("readers_roc.png", lambda path: figure(doc, path), tempfile.gettempdir())
        png = out.read("readers_roc.png")
    out.write_bytes("readers.md", markdown(doc).encode())
    out.write_bytes("readers.html", page(doc, png).encode())
    out.write_bytes("readers.json", json.dumps(doc, indent=2).encode())
