"""Fit the faithful patient's relevance head on the calibration half of the probe set.

Every (calibration probe, fact of its case) pair is one example: label 1 when the fact answers the probe.
Adversarial probes are left out (the question-form gate handles them); unanswerable probes contribute
negatives only, which is what teaches the head to abstain. The regularisation strength and the decision
rule (probability threshold, relative cut, at most k facts) are chosen by cross-validation *grouped by
case* within the calibration half; the test half is never read. Needs scikit-learn (a dev dependency).

The features' dense similarities come from MiniLM with its top layers fine-tuned on the same calibration
probes (:mod:`benchmarks.fit_encoder`); the cross-validation is nested — in every fold the encoder, the
centres and the head are fitted without that fold — so the CV figures are what an unseen case gets.
``--encoder plain`` fits the head on plain MiniLM instead.

Run:  ``python -m benchmarks.fit_relevance`` (six encoder fine-tunes, about 12 minutes each on one core) →
``mediq_env/data/relevance_head.json`` (+ the CV figures in its ``meta``),
``mediq_env/data/patient_encoder.safetensors`` and ``benchmarks/results/relevance_fit.md``. To use both cores:
``--features-cache DIR --only-folds 0,1,2`` in one process, ``--features-cache DIR --only-folds 3,4`` and then
``--features-cache DIR`` in another. ``--cv-only`` compares the two ways of fitting the head and writes
``benchmarks/results/relevance_cv.md`` only.

``--device cuda`` runs MiniLM on a GPU. Use one process there: several processes on one GPU take turns on
it. An H200 run of 20 fold processes at once, with a loss then computed probe by probe, managed about one epoch
a minute each, no faster than a CPU core; the loss is now batched per case (``fit_encoder.case_loss``).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import itertools
import os
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import write_result
from benchmarks.fit_encoder import fine_tune
from benchmarks.patient_quality import probe_metrics
from benchmarks.probes import Probe, load_probe_cases, load_probes
from mediq_env.patient import FaithfulPatient, load_embedder
from mediq_env.relevance import FEATURES, HEAD_PATH, RelevanceHead
from mediq_env.tuned_encoder import ENCODER_PATH, TunedEncoder

__all__ = ["choose_rule", "features_for", "fit"]

# Constraints the rule is chosen under (a little inside the published targets, to leave room for noise).
MAX_OFF_TARGET = 0.04
MIN_ABSTAINED = 0.90
ANSWER_ALL = 5


def _blank_head() -> RelevanceHead:
    n = len(FEATURES)
    return RelevanceHead(weights=(0.0,) * n, bias=0.0, mean=(0.0,) * n, scale=(1.0,) * n)


def features_for(probes: list[Probe], patient: FaithfulPatient) -> list[np.ndarray]:
    embeddings = patient.embed_questions([p.question for p in probes])
    return [
        patient.features(load_probe_cases(p.source)[p.case_id], p.question, e) for p, e in zip(probes, embeddings, strict=True)
    ]


def _select(probs: np.ndarray, threshold: float, relative: float, k: int) -> tuple[int, ...]:
    head = RelevanceHead(weights=(0.0,) * len(FEATURES), bias=0.0, mean=(0.0,) * len(FEATURES), scale=(1.0,) * len(FEATURES),
                         threshold=threshold, relative=relative, k=k)
    return head.select(probs)


def _violation(m: dict[str, Any]) -> float:
    """How far a rule's figures fall outside the bounds (0 when it meets both)."""
    return max(0.0, m["off_target"] - MAX_OFF_TARGET) + max(0.0, MIN_ABSTAINED - m["abstained"])


def _rank(m: dict[str, Any]) -> tuple[float, float]:
    """Bounds first — a rule that meets them beats any that does not, and among those that do not, the one
    closest to them wins — then the most answered (precision breaks ties). Answering more never buys a
    breach of the off-target or abstention bound."""
    return (-round(_violation(m), 4), m["answered"] + 0.1 * m["precision"])


def choose_rule(probes: list[Probe], probs: list[np.ndarray]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The (threshold, relative, k) that answers most while meeting the off-target and abstention bounds."""
    best: tuple[tuple[float, float], dict[str, Any], dict[str, Any]] | None = None
    # k is not tuned: a patient asked "which medicines do you take?" names all of them at once, so that a
    # paraphrased re-ask finds nothing new (the hack suite's paraphrase doctor) — up to ANSWER_ALL facts.
    for threshold, relative, k in itertools.product(np.arange(0.10, 0.96, 0.02), (0.0, 0.5, 0.7, 0.85), (ANSWER_ALL,)):
        revealed = [_select(p, float(threshold), relative, k) for p in probs]
        m = probe_metrics(probes, revealed)
        rule = {"threshold": round(float(threshold), 2), "relative": relative, "k": k}
        if best is None or _rank(m) > best[0]:
            best = (_rank(m), rule, m)
    assert best is not None
    return best[1], best[2]


def fit(probes: list[Probe], xs: list[np.ndarray], c: float) -> tuple[np.ndarray, float, np.ndarray, np.ndarray]:
    from sklearn.linear_model import LogisticRegression

    x = np.concatenate(xs)
    y = np.concatenate([np.isin(np.arange(len(f)), p.answers).astype(int) for p, f in zip(probes, xs, strict=True)])
    mean, scale = x.mean(axis=0), x.std(axis=0) + 1e-6
    model = LogisticRegression(C=c, max_iter=3000)
    model.fit((x - mean) / scale, y)
    return model.coef_[0], float(model.intercept_[0]), mean, scale


def _folds(probes: list[Probe], folds: int = 5) -> list[int]:
    """Fold of each probe: grouped by case, so no case is in two folds."""
    keys = sorted({f"{p.source}:{p.case_id}" for p in probes})
    rng = np.random.default_rng(0)
    fold_of = {k: i % folds for i, k in enumerate(rng.permutation(keys))}
    return [fold_of[f"{p.source}:{p.case_id}"] for p in probes]


def _oof(xs_by_fold: list[list[np.ndarray]], fold: list[int]) -> list[np.ndarray]:
    """Each probe's features as computed by the encoder of its own fold: one that never saw its case."""
    return [xs_by_fold[f][i] for i, f in enumerate(fold)]


def _cv_probs(probes: list[Probe], xs_by_fold: list[list[np.ndarray]], fold: list[int], c: float, head_features: str) -> list[np.ndarray]:
    """Out-of-fold probabilities for fold f, always computed with the encoder of fold f (fine-tuned
    without fold f). What the head for fold f is fitted on depends on ``head_features``:

    * ``"in-fold"`` (the default) — the other folds' features as computed by the encoder of fold f. That
      encoder was trained on exactly those probes, so they are near-perfectly separated (the shipped encoder
      scores every calibration probe's answer first), unlike an unseen question's.
    * ``"oof"`` (cross-fitting, as in stacking) — the other folds' out-of-fold features: each computed by
      an encoder that never saw that probe's case, so the head is fitted on the kind of features it is
      applied to.

    Measured on the calibration half (``--cv-only``, ``benchmarks/results/relevance_cv.md``), cross-fitting
    lost: 59.7% answered against 72.4% at the same off-target (3.8 / 3.9%). The head fitted on clean
    features learns a sharper direction; the decision threshold, chosen on unseen folds, absorbs the shift
    in scale. The default stays ``in-fold``.
    """
    train_xs = _oof(xs_by_fold, fold) if head_features == "oof" else None
    out: list[np.ndarray] = [np.empty(0)] * len(probes)
    for f, xs in enumerate(xs_by_fold):
        train = [i for i in range(len(probes)) if fold[i] != f]
        source = train_xs if train_xs is not None else xs
        w, b, mean, scale = fit([probes[i] for i in train], [source[i] for i in train], c)
        head = RelevanceHead(tuple(w), b, tuple(mean), tuple(scale))
        for i in range(len(probes)):
            if fold[i] == f:
                out[i] = head.probabilities(xs[i])
    return out


def _patient_for(probes: list[Probe], encoder: Any) -> FaithfulPatient:
    """A patient with a blank head whose centres are the mean question and mean (frame-stripped) fact
    embedding of ``probes``' cases."""
    patient = FaithfulPatient(head=_blank_head(), embedder=encoder)
    q_centre = np.mean(patient.embed_questions([p.question for p in probes]), axis=0)
    cases = {(p.source, p.case_id): load_probe_cases(p.source)[p.case_id] for p in probes}
    f_centre = np.concatenate([patient.embed_facts(c.facts) for c in cases.values()]).mean(axis=0)
    patient.head = dataclasses.replace(_blank_head(), question_centre=tuple(map(float, q_centre)), fact_centre=tuple(map(float, f_centre)))
    return patient


def _cache_file(cache: Path, fold: int) -> Path:
    return cache / f"fold{fold}.npz"


def _load_fold(cache: Path | None, fold: int, key: str, n_probes: int) -> list[np.ndarray] | None:
    """One fold's features from ``cache``, or None when absent or computed for other probes or settings."""
    path = None if cache is None else _cache_file(cache, fold)
    if path is None or not path.exists():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            if str(z["key"]) != key or len(z["lengths"]) != n_probes:
                print(f"{path}: features for other probes or settings; recomputing", flush=True)
                return None
            return np.split(z["x"], np.cumsum(z["lengths"])[:-1])
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:  # cut short or damaged: a miss, not a crash
        print(f"{path}: unreadable features cache ({type(exc).__name__}: {exc}); recomputing", flush=True)
        return None


def _save_fold(cache: Path | None, fold: int, key: str, xs: list[np.ndarray]) -> None:
    if cache is None:
        return
    cache.mkdir(parents=True, exist_ok=True)
    # A temporary file of this process's own, renamed into place: a fold cut short leaves no half-written
    # cache, and two processes writing the same fold (--only-folds beside a full run) do not collide.
    fd, tmp = tempfile.mkstemp(prefix=f"fold{fold}.", suffix=".tmp.npz", dir=cache)
    try:
        with os.fdopen(fd, "wb") as fh:
            np.savez(fh, key=np.array(key), lengths=np.array([len(x) for x in xs]), x=np.concatenate(xs))
        os.replace(tmp, _cache_file(cache, fold))
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _features_key(probes: list[Probe], fold: list[int], args: argparse.Namespace, base: Any) -> str:
    """What a fold's features depend on: the probes and their cases' facts, the folds, the encoder settings and
    base model, the feature list, and the code that computes features and tunes the encoder."""
    from mediq_env import patient as patient_module
    from mediq_env import relevance, tuned_encoder
    from mediq_env.tuned_encoder import _base_fingerprint

    facts = {(p.source, p.case_id): load_probe_cases(p.source)[p.case_id].facts for p in probes}
    code = [Path(m.__file__).read_bytes() for m in (relevance, patient_module, tuned_encoder) if m.__file__]
    code.append(Path(fine_tune.__code__.co_filename).read_bytes())
    base_id = _base_fingerprint(base[0].auto_model) if args.encoder == "tuned" else "plain"
    return hashlib.sha256(repr((
        [(p.source, p.case_id, p.question, p.answers) for p in probes], sorted(facts.items()), fold, args.encoder,
        args.top_layers, args.epochs, args.lr, base_id, FEATURES, [hashlib.sha256(c).hexdigest() for c in code],
    )).encode()).hexdigest()


# Settings that change the fit, with their defaults: a non-default one is written into the recorded command.
_SETTINGS: dict[str, Any] = {"top_layers": 2, "epochs": 16, "lr": 5e-5}


def _device_name(device: str) -> str:
    import torch

    return str(torch.cuda.get_device_name(torch.device(device))) if device.startswith("cuda") else device


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=HEAD_PATH)
    parser.add_argument("--encoder-out", type=Path, default=ENCODER_PATH)
    parser.add_argument("--encoder", choices=("tuned", "plain"), default="tuned",
                        help="fine-tune MiniLM's top layers (tuned, the default) or use plain MiniLM")
    parser.add_argument("--top-layers", type=int, default=_SETTINGS["top_layers"])
    parser.add_argument("--epochs", type=int, default=_SETTINGS["epochs"])
    parser.add_argument("--lr", type=float, default=_SETTINGS["lr"])
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--device", default="cpu",
                        help="where MiniLM runs while fitting (e.g. cuda): the written files load on the CPU either way")
    parser.add_argument("--head-features", choices=("in-fold", "oof"), default="in-fold",
                        help="fit the head on the features of the probes the encoder was trained on (the default) or on "
                             "out-of-fold features (cross-fitting); both are cross-validated and reported")
    parser.add_argument("--cv-only", action="store_true",
                        help="cross-validate both ways of fitting the head and write benchmarks/results/relevance_cv.{json,md}; "
                             "fit and write no encoder or head")
    parser.add_argument("--features-cache", type=Path, default=None,
                        help="folder keeping each fold's features (keyed by the probes and encoder settings), so a rerun "
                             "skips fine-tuning the fold encoders")
    parser.add_argument("--only-folds", default=None,
                        help="compute and cache these folds' features (comma-separated, 0-based) and stop: with "
                             "--features-cache, several processes share the folds between cores")
    args = parser.parse_args(argv)
    folds_asked: list[int] = []
    if args.only_folds is not None:
        if args.features_cache is None:
            parser.error("--only-folds needs --features-cache (the folds' features would be thrown away)")
        try:
            folds_asked = [int(x) for x in args.only_folds.split(",") if x.strip()]
        except ValueError:
            folds_asked = []
        if not folds_asked or any(not 0 <= f < args.folds for f in folds_asked):
            parser.error(f"--only-folds: comma-separated fold numbers in 0..{args.folds - 1}, got {args.only_folds!r}")
    import torch

    torch.set_num_threads(1)  # reproducible sums; the fit is single-core by design
    probes = [p for p in load_probes(split="calibration") if p.kind != "adversarial"]
    sources = sorted({p.source for p in probes})
    base = load_embedder()
    if args.device != "cpu":
        base.to(args.device)
    fold = _folds(probes, args.folds)

    def encoder_for(train: list[Probe]) -> Any:
        if args.encoder == "plain":
            return base
        return fine_tune(train, base, top_layers=args.top_layers, epochs=args.epochs, lr=args.lr)

    key = _features_key(probes, fold, args, base)

    def fold_features(f: int) -> list[np.ndarray]:
        """Every probe's features under the encoder and centres of fold f (fitted without fold f)."""
        xs = _load_fold(args.features_cache, f, key, len(probes))
        if xs is None:
            t0 = time.time()
            train = [p for p, g in zip(probes, fold, strict=True) if g != f]
            xs = features_for(probes, _patient_for(train, encoder_for(train)))
            _save_fold(args.features_cache, f, key, xs)
            print(f"fold {f + 1}/{args.folds}: features in {time.time() - t0:.0f} s", flush=True)
        return xs

    if args.only_folds is not None:
        for f in folds_asked:
            fold_features(f)
        return 0
    if not args.cv_only:
        # The final encoder first: the folds may still be in the making in other processes (--only-folds).
        encoder = encoder_for(probes)
        patient = _patient_for(probes, encoder)
    # Nested: each fold's encoder and centres see only the other folds.
    xs_by_fold = [fold_features(f) for f in range(args.folds)]
    trials_by_method: dict[str, list[tuple[float, dict[str, Any], dict[str, Any]]]] = {}
    for method in ("in-fold", "oof"):
        trials = trials_by_method.setdefault(method, [])
        for c in (0.03, 0.1, 0.3, 1.0):
            rule, m = choose_rule(probes, _cv_probs(probes, xs_by_fold, fold, c, method))
            trials.append((c, rule, m))
            print(f"{method} C={c}: rule {rule} -> answered {m['answered']:.3f} off-target {m['off_target']:.3f} "
                  f"abstained {m['abstained']:.3f} precision {m['precision']:.3f}", flush=True)
    table = "\n".join(
        f"| {method} | {t[0]} | {t[1]['threshold']} | {t[2]['answered']:.1%} | {t[2]['off_target']:.1%} | {t[2]['abstained']:.1%} | {t[2]['precision']:.1%} |"
        for method, ts in trials_by_method.items() for t in ts
    )
    methods_md = (
        "Head fitted on: *in-fold* — the features of the probes each fold's encoder was trained on; *oof* — "
        "out-of-fold features, each from an encoder that never saw that case (cross-fitting). Either way the "
        "figures are on folds the encoder and head never saw.\n\n"
        "| head fitted on | C | threshold | answered | off-target | abstained | precision |\n|---|---|---|---|---|---|---|\n"
        f"{table}\n"
    )
    trials_json = {method: [{"C": t[0], "rule": t[1], "cv": t[2]} for t in ts] for method, ts in trials_by_method.items()}
    if args.cv_only:
        md = (f"# Relevance head: grouped {args.folds}-fold CV on the calibration half, two ways of fitting the head\n\n"
              f"Command: `python -m benchmarks.fit_relevance --cv-only`; {len(probes)} non-adversarial calibration probes.\n\n"
              + methods_md)
        write_result("relevance_cv", {"trials": trials_json}, md)
        print(md)
        return 0
    trials = trials_by_method[args.head_features]
    c, rule, cv = max(trials, key=lambda t: _rank(t[2]))
    if args.head_features == "oof":
        w, b, mean, scale = fit(probes, _oof(xs_by_fold, fold), c)
    else:
        w, b, mean, scale = fit(probes, features_for(probes, patient), c)
    meta: dict[str, Any] = {
        "fitted_on": f"calibration half: {len(probes)} non-adversarial probes over {len({(p.source, p.case_id) for p in probes})} cases ({', '.join(sources)})",
        "C": c,
        "encoder": args.encoder,
        "head_features": args.head_features,
        "cv_grouped_by_case": {k: (round(v, 4) if isinstance(v, float) else v) for k, v in cv.items()},
        "command": "python -m benchmarks.fit_relevance" + ("" if args.encoder == "tuned" else " --encoder plain")
        + ("" if args.head_features == "in-fold" else " --head-features oof")
        + "".join(f" --{name.replace('_', '-')} {getattr(args, name)}" for name, default in _SETTINGS.items() if getattr(args, name) != default),
        "device": args.device if args.device == "cpu" else f"{args.device} ({_device_name(args.device)})",
    }
    if isinstance(encoder, TunedEncoder):
        path = encoder.save(args.encoder_out)
        meta["encoder_file"] = {"name": path.name, "sha256": hashlib.sha256(path.read_bytes()).hexdigest(), **encoder.meta}
    head = RelevanceHead(tuple(float(x) for x in w), b, tuple(float(x) for x in mean), tuple(float(x) for x in scale),
                         threshold=rule["threshold"], relative=rule["relative"], k=rule["k"], meta=meta,
                         question_centre=patient.head.question_centre, fact_centre=patient.head.fact_centre)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(head.to_json(), encoding="utf-8")
    weights = "\n".join(f"| {f} | {wt:+.3f} |" for f, wt in sorted(zip(FEATURES, w, strict=True), key=lambda t: -abs(t[1])))
    encoder_line = (
        f"Encoder: MiniLM with its top {args.top_layers} layers fine-tuned on the same probes ({args.epochs} epochs, lr {args.lr}; "
        "`benchmarks/fit_encoder.py`), refitted inside every fold.\n\n" if args.encoder == "tuned" else "Encoder: plain MiniLM.\n\n"
    ) + f"Fitted on: {meta['device']}; command: `{meta['command']}`.\n\n"
    md = (
        "# Relevance head fit (calibration half only)\n\n"
        f"{meta['fitted_on']}; C = {c}; rule: threshold {rule['threshold']}, relative {rule['relative']}, k {rule['k']}.\n\n"
        + encoder_line
        + f"Grouped {args.folds}-fold CV on calibration (encoder, centres and head fitted without the held-out fold): "
        f"answered {cv['answered']:.1%}, off-target {cv['off_target']:.1%}, precision {cv['precision']:.1%}, abstained {cv['abstained']:.1%}.\n\n"
        + methods_md
        + f"\nWritten: the head fitted on **{args.head_features}** features, with the C of its best CV figures.\n\n"
        f"| feature | weight (standardised) |\n|---|---|\n{weights}\n"
    )
    write_result("relevance_fit", {"meta": meta, "rule": rule, "trials": trials_json}, md)
    print(md)
    print(f"written: {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
