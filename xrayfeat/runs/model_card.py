"""``MODEL_CARD.md``: the model card of an export, in the sections of Mitchell et al. 2019 ("Model Cards for
Model Reporting"), filled from ``export.json``'s contract (:mod:`xrayfeat.runs.contract`).

Before the sections, a box says what a reader must know first: RANDOM weights
when the backbone was not trained, the shortcut sentinel when the pixels
baseline came close to the head (the data, not the model, does the work), and
each external evaluation where the head scored lower than on its own test
split. Every value from the record is escaped for Markdown
(:func:`xrayfeat.display.md_text`).
"""

from __future__ import annotations

from xrayfeat.display import md_code, md_text
from xrayfeat.runs.contract import external_drops

__all__ = ["model_card", "SECTIONS", "RANDOM_LINE"]

#: The card's sections, in order (Mitchell et al. 2019).
SECTIONS = ("Model details", "Intended use", "Factors", "Metrics", "Evaluation data", "Training data",
            "Quantitative analyses", "Ethical considerations", "Caveats and recommendations")
#: The first line of the box of a model on random backbone weights.
RANDOM_LINE = ("RANDOM backbone weights (--weights none): the backbone was never trained; its features carry no "
               "ImageNet knowledge and these results say nothing about transfer learning.")


def _n(x, digits: int = 3) -> str:
    if x is None:
        return "n/a"
    if isinstance(x, bool) or isinstance(x, int):
        return str(x)
    return f"{x:.{digits}f}"


def _ci(ci) -> str:
    return f" [{_n(ci[0])}, {_n(ci[1])}]" if ci else ""


def _table(header, rows) -> list[str]:
    lines = ["| " + " | ".join(md_text(h) for h in header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(md_text(c) for c in row) + " |" for row in rows]
    return lines + [""]


def _box(info: dict) -> list[str]:
    """The lines said first: random weights, the shortcut sentinel, external drops (and the other warnings)."""
    items = []
    if info["weights"]["random"]:
        items.append("**" + md_text(RANDOM_LINE) + "**")
    for w in info["warnings"]:
        if w["kind"] == "shortcut":
            items.append("**Shortcut sentinel:** " + md_text(w["message"]))
    for drop in external_drops(info):
        items.append(f"**External drop ({md_text(drop['evaluation'])}):** {md_text(drop['figure'])} "
                     f"{_n(drop['internal'])} internal → {_n(drop['external'])} external ({drop['change']:+.3f})")
    calibration = info["calibration"]
    if calibration["method"] and not calibration["applied_in_model"]:
        items.append("**Uncalibrated outputs:** " + md_text(calibration["note"]))
    if not items:
        items.append("No random weights, no shortcut warning, no external drop recorded"
                     + ("" if info["external"] else " (no external evaluation either: run `xrayfeat evaluate`)") + ".")
    others = [w for w in info["warnings"] if w["kind"] not in ("random_weights", "shortcut")]
    return (["> **Read this first**", ">"] + [f"> - {item}" for item in items]
            + ([">", "> Other warnings of the run:"] + [f"> - {md_text(w['message'])}" for w in others] if others else [])
            + [""])


def model_card(info: dict) -> str:
    """The Markdown of ``MODEL_CARD.md`` from an ``export.json`` dict (:func:`xrayfeat.runs.export.export_run`)."""
    run, weights, pre, decision = info["run"], info["weights"], info["preprocessing"], info["decision"]
    calibration, metrics, data = info["calibration"], info["metrics"], info["data"]
    classes = info["classes"]
    kind = "findings (multi-label: one sigmoid per finding)" if info.get("multilabel") else "classes"
    lines = [f"# Model card: {md_text(run['name'])}", ""]
    lines += _box(info)

    lines += ["## Model details", "",
              f"- Run {md_text(run['name'])} (config.json sha256 {md_code(info['run_id'])}), trained "
              f"{md_text(run['created'])} with xrayfeat {md_text(info['versions']['trained_with'].get('xrayfeat', info['xrayfeat']))}; "
              f"exported {md_text(info['created'])} with xrayfeat {md_text(info['xrayfeat'])}, Keras "
              f"{md_text(info['keras'])} on {md_text(info['backend'])}.",
              f"- Architecture: {md_text(info['backbone'])} backbone up to {md_code(info['layer'])}, frozen"
              + (" (its tail trained)" if info["train_tail"] else "")
              + f", then the trained head; {info['params']:,} parameters.",
              f"- Weights: {md_text(weights['identity'])}"
              + (" — RANDOM (never trained)" if weights["random"] else "")
              + (f"; file {md_code(info['weights_file']['file'])}" if info["weights_file"]["file"] else "")
              + (f", md5 {md_code(info['weights_file']['md5'])}" if info["weights_file"]["md5"] else "")
              + (f", sha256 {md_code(info['weights_file']['sha256'])}" if info["weights_file"]["sha256"] else "") + ".",
              f"- Format: {md_text(info['format'])} ({md_code(info['model'])}); input {md_code(info['input_name'])} "
              f"{md_text(pre['model_input'])}; output: {md_text(info['output'])}.",
              f"- Output {kind}, in order: " + ", ".join(md_code(c) for c in classes) + ".",
              f"- Decision: {md_text(decision['how'])}"
              + ("; thresholds " + ", ".join(f"{md_code(c)} {_n(t, 4)}" for c, t in decision["thresholds"].items())
                 + f" (rule {md_text(decision['threshold_rule'])}, chosen on {md_text(decision['chosen_on'])})"
                 if decision["thresholds"] else "") + ". The model outputs probabilities; the rule is applied "
              "outside it (export.json `decision`).",
              "- Calibration: " + (md_text(calibration["note"]) if not calibration["method"] else
                                   f"{md_text(calibration['method'])}, fitted on {calibration.get('n')} validation "
                                   f"images; {'applied inside the exported model' if calibration['applied_in_model'] else md_text(calibration['note'])}")
              + ".", ""]

    lines += ["## Intended use", "", md_text(info["intended_use"]), "",
              f"- Trained on: {md_code(data['path'])} ({info['task']}, {len(classes)} {kind}); "
              f"{', '.join(f'{k} {v}' for k, v in data['counts'].items())}.",
              "- Intended users: researchers studying chest X-ray classifiers, reproducing or auditing this study.",
              "- Out of scope: any decision about a patient; images from other hospitals, scanners, views or "
              "populations until evaluated there (`xrayfeat evaluate`); inputs not decoded as xrayfeat decodes them.",
              ""]

    groups = metrics["by_group"]
    lines += ["## Factors", "",
              "- Relevant factors: acquisition site/hospital (source), scanner and view, patient sex and age; "
              "shortcuts (markers, borders, text) a model may learn instead of the disease.",
              "- Evaluated here: " + (", ".join(md_text(g) for g in groups) + " (patient groups of the test split)"
                                      if groups else "no patient groups were recorded with the data") + ".", ""]

    h = metrics["head"]
    level = f"{100 * h['ci_level']:g}%" if h.get("ci_level") else "95%"
    lines += ["## Metrics", "",
              f"- Headline figures on the held-out test split with {level} confidence intervals "
              f"({md_text(h.get('ci_method') or 'bootstrap')}): " + ", ".join(
                  md_text(k) for k, v in h.items() if isinstance(v, dict)) + ".",
              "- Per class: ROC-AUC, and sensitivity/specificity at the threshold chosen on validation (never on test).",
              "- Calibration: Brier score and expected calibration error (ECE), before and after calibration.", ""]

    lines += ["## Evaluation data", "",
              f"- Internal: the run's test split, {h['n']} images"
              + (f" of {h['n_patients']} patients" if h.get("n_patients") else "") + ", kept apart from training (by patient where the data names patients).",
              ]
    if info["external"]:
        for name, e in info["external"].items():
            lines.append(f"- External {md_text(name)}: {md_code(e['data'])}, {e['n']} images "
                         f"({e.get('excluded') or 0} left out as seen in training).")
    else:
        lines.append("- External: none. Results from another hospital's data are missing; expect a drop there.")
    lines.append("")

    lines += ["## Training data", "",
              f"- {md_code(data['path'])}: {', '.join(f'{k} {v}' for k, v in data['counts'].items())} images; "
              f"validation: {md_text(data['validation'])}.",
              f"- Preprocessing: {md_text(pre['mode'])} at {pre['image_size']} px, decoder {md_text(pre['decode'])}; "
              f"features stored as {md_text(pre['store_dtype'])}"
              + (f" (the exported model rounds them to {md_text(pre['features_rounded_to'])} as the store did)"
                 if pre["features_rounded_to"] else "") + ".", ""]

    lines += ["## Quantitative analyses", "", "Head, internal test split:", ""]
    header = ["Figure", "Internal"] + [f"{name} (external)" for name in info["external"]]
    rows = []
    for figure, pair in h.items():
        if isinstance(pair, dict):
            row = [figure, _n(pair["value"]) + _ci(pair["ci"])]
            for e in info["external"].values():
                other = e["head"].get(figure) or {}
                row.append(_n(other.get("value")) + _ci(other.get("ci")))
            rows.append(row)
    lines += _table(header, rows)
    rows = []
    for name, c in metrics["per_class"].items():
        at = c.get("at_threshold") or {}
        rows.append([name, _n(c.get("roc_auc")), _n(at.get("threshold"), 4),
                     _n(at.get("sensitivity")) + _ci((at.get("ci") or {}).get("sensitivity")),
                     _n(at.get("specificity")) + _ci((at.get("ci") or {}).get("specificity"))])
    lines += ["Per class (test):", ""] + _table(["Class", "ROC-AUC", "Threshold", "Sensitivity", "Specificity"], rows)
    for group, table in groups.items():
        figure = "macro_roc_auc" if info.get("multilabel") else "accuracy"
        rows = [[value, str(v["n"]), _n(v[figure]) + _ci(v["ci"])] for value, v in table["values"].items()]
        lines += [f"By {md_text(group)} (test; {table['unknown']} unknown):", ""] + _table([group, "Images", figure], rows)
    baselines = metrics["baselines"]
    if baselines:
        rows = [[name + (" (sentinel)" if name == "pixels" else "")]
                + [_n(v["value"]) + _ci(v["ci"]) for v in b.values() if isinstance(v, dict)]
                for name, b in baselines.items()]
        figures = [k for k, v in next(iter(baselines.values())).items() if isinstance(v, dict)]
        lines += ["Baselines on the same test split (the pixels sentinel: a logistic regression on raw pixels):", ""]
        lines += _table(["Model", *figures], rows)
    if calibration["method"]:
        rows = [[where, _n(calibration[where]["before"]["brier"]), _n(calibration[where]["after"]["brier"]),
                 _n(calibration[where]["before"]["ece"]), _n(calibration[where]["after"]["ece"])]
                for where in ("validation", "test")]
        lines += [f"Calibration ({md_text(calibration['method'])}):", ""]
        lines += _table(["Images", "Brier before", "Brier after", "ECE before", "ECE after"], rows)

    lines += ["## Ethical considerations", "",
              "- Chest X-ray labels mined from reports are noisy; a model can learn the hospital, scanner or text "
              "markers rather than the disease, and perform worse for under-represented groups.",
              "- The data's consent, de-identification and licence terms bind every use of this model.",
              "- No decision about a patient may rest on it.", ""]

    lines += ["## Caveats and recommendations", ""]
    lines += [f"- {md_text(w['message'])}" for w in info["warnings"]]
    lines += ["- Feed the exact pixels: decode and resize as `xrayfeat.data.images.read_image` does "
              f"({pre['image_size']} px, uint8 RGB); the model does not resize.",
              "- Apply the decision rule and thresholds of export.json to the probabilities, and re-choose them on "
              "local validation data before any use at another site.",
              "- Evaluate on local data (`xrayfeat evaluate`) and compare with the figures above.", ""]
    return "\n".join(lines)
