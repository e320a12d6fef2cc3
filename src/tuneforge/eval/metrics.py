"""Item metrics: exact match, contains-answer, ROUGE-L, BLEU-4 (Chinese segmented by jieba).

Libraries, no downloads at run time: `rouge-score` (ROUGE-L F1, with jieba as its tokenizer: its own
tokenizer keeps only [a-z0-9] and would drop every Chinese character), `sacrebleu` (sentence BLEU-4, exp
smoothing, on jieba-segmented text joined by spaces with tokenize="none").
"""

from __future__ import annotations

import functools
import re
import unicodedata


def normalize(text: str) -> str:
    """Text compared for exact match: NFKC, lower case, whitespace and end punctuation trimmed."""
    text = unicodedata.normalize("NFKC", text).lower()
    return re.sub(r"\s+", " ", text).strip().rstrip("。.!！?？")


def exact_match(pred: str, gold: str) -> float:
    """1.0 where the normalized prediction equals the normalized reference."""
    return float(normalize(pred) == normalize(gold))


def contains(pred: str, gold: str) -> float:
    """1.0 where the normalized reference appears in the normalized prediction."""
    return float(normalize(gold) in normalize(pred))


@functools.cache
def _jieba():
    import logging

    import jieba

    jieba.setLogLevel(logging.WARNING)  # it logs "Building prefix dict…" on first use
    return jieba


def segment(text: str) -> list[str]:
    """Words of `text`: jieba for Chinese, whitespace-separated words elsewhere (jieba passes them through)."""
    return [w for w in _jieba().lcut(normalize(text)) if w.strip()]


class _JiebaTokenizer:
    """rouge-score's tokenizer interface over jieba."""

    def tokenize(self, text: str) -> list[str]:
        return segment(text)


@functools.cache
def _rouge():
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"], tokenizer=_JiebaTokenizer())


def rouge_l(pred: str, gold: str) -> float:
    """ROUGE-L F1 on jieba words, 0-1."""
    return _rouge().score(gold, pred)["rougeL"].fmeasure


def bleu4(pred: str, gold: str) -> float:
    """Sentence BLEU-4 on jieba words (sacrebleu, exp smoothing), 0-1."""
    import sacrebleu

    return sacrebleu.sentence_bleu(" ".join(segment(pred)), [" ".join(segment(gold))], tokenize="none").score / 100
