#!/usr/bin/env python3
"""Score Microsoft Presidio's pattern recognizers on a generate_corpus.py corpus.

    python tests/pii/presidio_eval.py --corpus /tmp/corpus.jsonl [--header] [--row-only]

Needs tests/pii/requirements-presidio.txt. No spaCy model is downloaded: the
NLP engine is spacy.blank("en"), so Presidio's NER recognizer finds nothing
and only its regex/checksum/phonenumbers recognizers (plus context-word
boosting) run. That is the fair baseline for a regex scanner.

Metrics (the Rust evaluation uses the same definitions; keep them in step):
span level and kind-agnostic.
  - a detection is a true positive if it shares at least one character with
    some ground-truth span;
  - precision = true-positive detections / all detections;
  - recall    = ground-truth spans overlapped by >= 1 detection / all spans;
  - throughput = texts / summed wall seconds of analyze() calls (engine
    construction excluded), single thread; median is per analyze() call.

Prints the markdown row(s) first, then (unless --row-only) the recognizers
that ran, per-kind recall, and where the false positives came from.
"""

from __future__ import annotations

import argparse
import collections
import json
import logging
import statistics
import sys
import time
from importlib.metadata import version

import spacy
import tldextract
from spacy.language import Language
from presidio_analyzer import AnalyzerEngine, RecognizerRegistry
from presidio_analyzer.nlp_engine import SpacyNlpEngine
from presidio_analyzer.predefined_recognizers import (
    EsNieRecognizer,
    EsNifRecognizer,
    ItDriverLicenseRecognizer,
    ItFiscalCodeRecognizer,
    ItIdentityCardRecognizer,
    ItPassportRecognizer,
    ItVatCodeRecognizer,
    PlPeselRecognizer,
    UkNinoRecognizer,
)

# Presidio's EmailRecognizer validates domains with tldextract, whose default
# extractor tries to download the Public Suffix List on first use. There is
# no internet here; use the snapshot bundled with the package instead of
# paying for (and logging) two failed fetches.
tldextract.tldextract.TLD_EXTRACTOR = tldextract.TLDExtract(suffix_list_urls=())

# The default config enables these only for es/it/pl. Our texts are analysed
# as "en" (there is one engine language), so register English instances of
# every recognizer the default config turns on for another language, plus
# UkNinoRecognizer, which is off by default but covers a corpus kind.
# NhsRecognizer and IbanRecognizer already run for "en" by default.
EXTRA_EN_RECOGNIZERS = (
    EsNifRecognizer, EsNieRecognizer,
    ItFiscalCodeRecognizer, ItDriverLicenseRecognizer, ItVatCodeRecognizer,
    ItIdentityCardRecognizer, ItPassportRecognizer,
    PlPeselRecognizer,
    UkNinoRecognizer,
)

# Presidio entity types that correspond to corpus kinds, for the second row:
# it shows Presidio's precision when asked only for what the corpus labels
# (no DATE_TIME, URL, US_DRIVER_LICENSE, ...). Presidio has nothing for
# `secret` (API keys, JWTs, PEM headers) or `fr_nir`.
CORPUS_ENTITIES = (
    "EMAIL_ADDRESS", "PHONE_NUMBER", "CREDIT_CARD", "IBAN_CODE", "US_SSN", "UK_NINO",
    "IT_FISCAL_CODE", "ES_NIF", "ES_NIE", "IP_ADDRESS",
)


@Language.component("lower_lemma")
def lower_lemma(doc):
    # A blank pipeline has no lemmatizer, so every lemma is "" and Presidio's
    # context enhancer (which matches lemmas against words like "phone",
    # "card", "iban") would never fire. Lower-cased text is a close stand-in
    # for English lemmas of those keywords.
    for token in doc:
        token.lemma_ = token.lower_
    return doc


class BlankSpacyNlpEngine(SpacyNlpEngine):
    """SpacyNlpEngine over spacy.blank(): tokens only, no model download."""

    def load(self) -> None:
        self.nlp = {}
        for model in self.models:
            nlp = spacy.blank(model["lang_code"])
            nlp.add_pipe("lower_lemma")
            self.nlp[model["lang_code"]] = nlp


def build_analyzer() -> AnalyzerEngine:
    nlp_engine = BlankSpacyNlpEngine(models=[{"lang_code": "en", "model_name": "blank:en"}])
    nlp_engine.load()
    registry = RecognizerRegistry(supported_languages=["en"])
    registry.load_predefined_recognizers(languages=["en"], nlp_engine=nlp_engine)
    for cls in EXTRA_EN_RECOGNIZERS:
        registry.add_recognizer(cls(supported_language="en"))
    # default_score_threshold stays at Presidio's default of 0.
    return AnalyzerEngine(registry=registry, nlp_engine=nlp_engine, supported_languages=["en"])


def overlaps(a_start: int, a_end: int, b_start: int, b_end: int) -> bool:
    return a_start < b_end and b_start < a_end


def evaluate(analyzer: AnalyzerEngine, corpus: list[dict], entities: list[str] | None) -> dict:
    n_spans = covered = n_det = tp_det = 0
    kind_total, kind_hit = collections.Counter(), collections.Counter()
    fp_entity, fp_where, det_entity = collections.Counter(), collections.Counter(), collections.Counter()
    times = []
    for rec in corpus:
        text = rec["text"]
        t0 = time.perf_counter()
        results = analyzer.analyze(text=text, language="en", entities=entities)
        times.append(time.perf_counter() - t0)

        spans = rec["spans"]
        n_spans += len(spans)
        for s in spans:
            kind_total[s["kind"]] += 1
            if any(overlaps(r.start, r.end, s["start"], s["end"]) for r in results):
                covered += 1
                kind_hit[s["kind"]] += 1
        for r in results:
            n_det += 1
            det_entity[r.entity_type] += 1
            if any(overlaps(r.start, r.end, s["start"], s["end"]) for s in spans):
                tp_det += 1
                continue
            fp_entity[r.entity_type] += 1
            hit = [n["kind"] for n in rec.get("negatives", [])
                   if overlaps(r.start, r.end, n["start"], n["end"])]
            fp_where[hit[0] if hit else "(other text)"] += 1
    total_s = sum(times)
    return {
        "texts": len(corpus), "spans": n_spans, "detections": n_det,
        "recall": covered / n_spans if n_spans else 0.0,
        "precision": tp_det / n_det if n_det else 0.0,
        "texts_per_s": len(corpus) / total_s if total_s else 0.0,
        "median_ms": statistics.median(times) * 1000 if times else 0.0,
        "kind_total": kind_total, "kind_hit": kind_hit,
        "fp_entity": fp_entity, "fp_where": fp_where, "det_entity": det_entity,
    }


def row(name: str, m: dict) -> str:
    return (f"| {name} | {m['texts']} | {m['spans']} | {m['recall']:.3f} | {m['precision']:.3f} "
            f"| {m['texts_per_s']:.1f} | {m['median_ms']:.2f} |")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--corpus", required=True, help="JSONL from generate_corpus.py")
    ap.add_argument("--header", action="store_true", help="print the table header first")
    ap.add_argument("--row-only", action="store_true", help="print only the main row")
    ap.add_argument("--limit", type=int, help="evaluate only the first N texts")
    args = ap.parse_args()

    logging.getLogger("presidio-analyzer").setLevel(logging.ERROR)
    with open(args.corpus, encoding="utf-8") as fh:
        corpus = [json.loads(line) for line in fh if line.strip()]
    if args.limit:
        corpus = corpus[: args.limit]

    analyzer = build_analyzer()
    analyzer.analyze(text="warm-up 555-0100 a@b.com", language="en")  # first-call setup is not per-text cost

    pv = version("presidio-analyzer")
    if args.header:
        print("| scanner | texts | spans | recall | precision | texts/s | median ms/text |")
        print("|---|---:|---:|---:|---:|---:|---:|")
    full = evaluate(analyzer, corpus, None)
    print(row(f"Presidio {pv} (all default recognizers, blank spaCy)", full))
    if args.row_only:
        return 0
    corpus_only = evaluate(analyzer, corpus, list(CORPUS_ENTITIES))
    print(row(f"Presidio {pv} (corpus entity types only)", corpus_only))

    recognizers = analyzer.get_recognizers(language="en")
    print("\n<!-- recognizers run (language en): "
          + ", ".join(sorted(f"{r.name}[{'/'.join(r.supported_entities)}]" for r in recognizers))
          + " -->")

    print("\n| kind | spans | recall (all recognizers) | recall (corpus entities) |")
    print("|---|---:|---:|---:|")
    for kind in sorted(full["kind_total"]):
        tot = full["kind_total"][kind]
        print(f"| {kind} | {tot} | {full['kind_hit'][kind] / tot:.3f} "
              f"| {corpus_only['kind_hit'][kind] / tot:.3f} |")

    for label, m in (("all recognizers", full), ("corpus entities", corpus_only)):
        print(f"\nfalse positives ({label}): {sum(m['fp_entity'].values())} of "
              f"{m['detections']} detections")
        print("  by Presidio entity: " + ", ".join(
            f"{e} {n}/{m['det_entity'][e]}" for e, n in m["fp_entity"].most_common()))
        print("  by what they hit:   " + ", ".join(f"{w} {n}" for w, n in m["fp_where"].most_common()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
