"""Evaluate one model with both backends on the same NanoBEIR data and compare their NDCG@10, dataset by dataset.

    python -m pipeline.evaluation.crosscheck --model PATH_OR_ID --dataset-id DIR_OR_HUB_ID --datasets scifact,msmarco \\
        [--max-seq-length N] [--batch-size 64] [--tolerance 1e-6] [--tie-eps 1e-6] [--strict] [--out DIR]

Both backends get the same `SentenceTransformer` (so the same max_seq_length and similarity function) and read the
same files: mteb runs its retrieval evaluation on tasks built from `--dataset-id` as sentence-transformers reads it
(`--mteb-source layout`; `registered` would use mteb's own Hub copies of NanoBEIR instead).

On identical data the two agree exactly except for one known, systematic difference: the order of *tied* documents
(sentence-transformers: ascending corpus id; mteb through pytrec_eval: descending). A query whose NDCG@10 differs is
"tie-order" when ranking both backends' lists with tied scores (within --tie-eps) in one canonical order gives both
the same NDCG@10; any other difference is unexplained. The check fails (exit 1) when, per dataset, the difference
left after putting the tie-order queries back at sentence-transformers' score exceeds --tolerance, when any query
differs unexplained (even if differences cancel in the mean), or when the two backends scored different queries.
With --strict, tie-order differences fail too: the raw |mteb - st| must be within --tolerance.

Tolerance 1e-6: with the same embeddings and rankings, the per-query NDCG@10s are the same numbers and the dataset
means differ only by float64 summation order (~1e-16). The smallest change one swapped pair of documents can make to
a query's NDCG@10 is (1/log2(10) - 1/log2(11)) / IDCG@10 >= 0.0119 / 4.54 = 2.6e-3, i.e. >= 2.6e-6 on a mean over
up to 1,000 queries (NanoBEIR has <= 50 per set: >= 5e-5), so 1e-6 cannot hide a single ranking difference. mteb's
own reported score is rounded to 5 decimals (shown as "mteb rounded"); the comparison uses its unrounded mean.
Tie eps 1e-6: exact ties need no eps on a CPU; on a GPU sentence-transformers scores there and mteb on the CPU,
which differ by a few float32 ulps (6e-8 each near 1.0), so scores closer than 1e-6 count as tied.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

import pytrec_eval

from pipeline import schema
from pipeline.evaluation.nanobeir import dataset_table

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

TOLERANCE = 1e-6
TIE_EPS = 1e-6
QUERY_EPS = 1e-9  # per-query NDCG@10s from the same ranking are equal to the last bit; anything above is a difference

Ranking = list[tuple[str, float]]  # (corpus id, score), best first


def read_predictions(path: Path) -> dict[str, Ranking]:
    """query id -> ranked (corpus id, score) from a predictions .jsonl (sentence-transformers' format)."""
    ranked = {}
    with open(path) as f:
        for line in f:
            pred = json.loads(line)
            ranked[str(pred["query_id"])] = [(str(h["corpus_id"]), float(h["score"])) for h in pred["results"]]
    return ranked


def canonical(ranking: Ranking, eps: float) -> list[str]:
    """Corpus ids best first, documents whose scores are within `eps` of their neighbour's in ascending id order."""
    ordered = sorted(ranking, key=lambda hit: -hit[1])
    out, group = [], []
    for hit in ordered:
        if group and group[-1][1] - hit[1] > eps:
            out += sorted(doc for doc, _ in group)
            group = []
        group.append(hit)
    return out + sorted(doc for doc, _ in group)


def ndcg10(ranked_ids: list[str], relevant: set[str]) -> float:
    """pytrec_eval's ndcg_cut_10 of a ranked list, scored by rank so trec_eval cannot reorder it."""
    run = {"q": {doc: float(len(ranked_ids) - i) for i, doc in enumerate(ranked_ids)}}
    scores = pytrec_eval.RelevanceEvaluator({"q": dict.fromkeys(relevant, 1)}, {"ndcg_cut_10"}).evaluate(run)
    return scores.get("q", {}).get("ndcg_cut_10", 0.0)


@dataclass
class Comparison:
    dataset: str
    queries: int
    st: float
    mteb: float
    mteb_rounded: float | None = None
    tie_order: list[str] = field(default_factory=list)  # queries that differ only by the order of tied documents
    unexplained: list[str] = field(default_factory=list)
    residual: float = 0.0  # mteb - st once the tie-order queries count at sentence-transformers' score
    problems: list[str] = field(default_factory=list)

    @property
    def diff(self) -> float:
        return self.mteb - self.st

    def ok(self, tolerance: float, strict: bool = False) -> bool:
        if strict and abs(self.diff) > tolerance:
            return False
        return not self.problems and not self.unexplained and abs(self.residual) <= tolerance


def compare_dataset(
    dataset: str,
    st_per_query: dict[str, float],
    mteb_per_query: dict[str, float],
    st_ranking: dict[str, Ranking],
    mteb_ranking: dict[str, Ranking],
    qrels: dict[str, set[str]],
    tie_eps: float = TIE_EPS,
    mteb_rounded: float | None = None,
) -> Comparison:
    """Compare one dataset's per-query NDCG@10s and classify every query that differs."""
    st_mean = sum(st_per_query.values()) / len(st_per_query)
    mteb_mean = sum(mteb_per_query.values()) / len(mteb_per_query) if mteb_per_query else float("nan")
    c = Comparison(dataset, len(st_per_query), st_mean, mteb_mean, mteb_rounded)
    if set(st_per_query) != set(mteb_per_query):
        only_st, only_mteb = set(st_per_query) - set(mteb_per_query), set(mteb_per_query) - set(st_per_query)
        c.problems.append(
            f"{dataset}: different queries scored (only sentence-transformers: {sorted(only_st)[:5]}, "
            f"only mteb: {sorted(only_mteb)[:5]}): not the same data"
        )
        c.residual = mteb_mean - st_mean
        return c
    adjusted = {}
    for q, st_score in st_per_query.items():
        m_score = mteb_per_query[q]
        adjusted[q] = m_score
        if abs(m_score - st_score) <= QUERY_EPS:
            continue
        relevant = qrels.get(q, set())
        st_canon = ndcg10(canonical(st_ranking.get(q, []), tie_eps), relevant)
        mteb_canon = ndcg10(canonical(mteb_ranking.get(q, []), tie_eps), relevant)
        if q in st_ranking and q in mteb_ranking and abs(st_canon - mteb_canon) <= QUERY_EPS:
            c.tie_order.append(q)
            adjusted[q] = st_score
        else:
            c.unexplained.append(q)
    c.residual = sum(adjusted.values()) / len(adjusted) - st_mean
    return c


def format_table(rows: list[Comparison], tolerance: float, strict: bool = False) -> str:
    header = (
        f"{'dataset':<16}{'queries':>8}{'sentence_transformers':>23}{'mteb':>12}{'mteb - st':>12}"
        f"{'mteb rounded':>14}{'tie-order q':>13}{'unexplained q':>15}  status"
    )
    lines = [header, "-" * len(header)]
    for c in rows:
        rounded = f"{c.mteb_rounded:.5f}" if c.mteb_rounded is not None else "-"
        lines.append(
            f"{c.dataset:<16}{c.queries:>8}{c.st:>23.6f}{c.mteb:>12.6f}{c.diff:>+12.2e}{rounded:>14}"
            f"{len(c.tie_order):>13}{len(c.unexplained):>15}  {'ok' if c.ok(tolerance, strict) else 'DIFFERS'}"
        )
    if rows:
        st_mean = sum(c.st for c in rows) / len(rows)
        mteb_mean = sum(c.mteb for c in rows) / len(rows)
        lines.append(f"{'mean':<16}{'':>8}{st_mean:>23.6f}{mteb_mean:>12.6f}{mteb_mean - st_mean:>+12.2e}")
    return "\n".join(lines)


def crosscheck(
    model_name: str | SentenceTransformer,
    dataset_id: str,
    datasets: list[str],
    max_seq_length: int | None = None,
    batch_size: int = 64,
    tolerance: float = TOLERANCE,
    tie_eps: float = TIE_EPS,
    out: Path | None = None,
    mteb_source: str = "layout",
    strict: bool = False,
) -> tuple[list[Comparison], str]:
    """Run both backends on `model_name` (a name or dir, or a loaded SentenceTransformer); return the per-dataset
    comparisons and the printed report."""
    from sentence_transformers import SentenceTransformer

    from pipeline.config import EvalBackend, EvalConfig
    from pipeline.evaluation.mteb_backend import evaluate_mteb, load_layout_split, predictions_file, task_name
    from pipeline.evaluation.st_backend import evaluate
    from pipeline.models import model_source

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(out) if out else Path(tmp)
        model = (
            model_name if isinstance(model_name, SentenceTransformer) else SentenceTransformer(model_source(model_name))
        )
        if max_seq_length:
            model.max_seq_length = max_seq_length
        cache = root / "datasets_cache"  # fresh: a local dir rebuilt in place is never served from a stale cache
        cfg = EvalConfig(dataset_id=dataset_id, datasets=list(datasets), batch_size=batch_size)
        st_cfg = replace(cfg, backend=EvalBackend.sentence_transformers)
        st = evaluate(model, st_cfg, root / "sentence_transformers", cache)
        mt = evaluate_mteb(model, replace(cfg, backend=EvalBackend.mteb), root / "mteb", cache, source=mteb_source)

        names = dataset_table(dataset_id)
        st_pq = json.loads((root / "sentence_transformers" / schema.PER_QUERY_FILE).read_text())
        mt_pq = json.loads((root / "mteb" / schema.PER_QUERY_FILE).read_text())
        mt_metrics = json.loads((root / "mteb" / "metrics.json").read_text())
        rows = []
        for short in datasets:
            human = names[short]
            st_rank = read_predictions(
                root / "sentence_transformers" / f"Information-Retrieval_evaluation_Nano{human}_predictions_"
                f"{st['score_function']}.jsonl"
            )
            mt_rank = read_predictions(root / "mteb" / predictions_file(human))
            qrels = load_layout_split(dataset_id, human, cache).qrels
            rounded = mt_metrics.get(f"{task_name(short, human)}_{'ndcg_at_10'}")  # `_flat_metrics`: <Task>_<metric>
            rows.append(compare_dataset(short, st_pq[short], mt_pq[short], st_rank, mt_rank, qrels, tie_eps, rounded))

    report = [
        f"NDCG@10 cross-check: {model_name if isinstance(model_name, str) else type(model).__name__} "
        f"({model.similarity_fn_name}, max_seq_length {model.max_seq_length}, "
        f"batch {batch_size}, {model.device}) on {dataset_id}",
        f"backends: sentence_transformers {st['backend_version']} vs mteb {mt['backend_version']} "
        f"(mteb tasks: {mteb_source}); tolerance {tolerance:g}, tie eps {tie_eps:g}",
        "",
        format_table(rows, tolerance, strict),
    ]
    if any(c.tie_order for c in rows):
        report.append(
            "\ntie-order q: queries whose NDCG@10 differs only because tied documents are ordered differently "
            "(sentence-transformers: ascending corpus id; mteb/pytrec_eval: descending). Not an error."
        )
    for c in rows:
        report += c.problems
        if c.unexplained:
            report.append(f"{c.dataset}: unexplained differences on queries {c.unexplained[:10]}")
    return rows, "\n".join(report)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="Hub id, packaged model name or local sentence-transformers dir")
    parser.add_argument("--dataset-id", required=True, help="local dir in the NanoBEIR layout or Hub id")
    parser.add_argument("--datasets", required=True, help="comma-separated short names, e.g. scifact,msmarco")
    parser.add_argument("--max-seq-length", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--tolerance", type=float, default=TOLERANCE, help="max |mteb - st| per dataset, after ties")
    parser.add_argument("--tie-eps", type=float, default=TIE_EPS, help="scores this close count as tied")
    parser.add_argument("--strict", action="store_true", help="fail on tie-order differences too")
    parser.add_argument("--out", type=Path, default=None, help="keep both backends' outputs here (default: temp)")
    parser.add_argument("--mteb-source", choices=("layout", "registered", "auto"), default="layout")
    args = parser.parse_args(argv)
    datasets = [d.strip() for d in args.datasets.split(",") if d.strip()]
    rows, report = crosscheck(
        args.model,
        args.dataset_id,
        datasets,
        args.max_seq_length,
        args.batch_size,
        args.tolerance,
        args.tie_eps,
        args.out,
        args.mteb_source,
        args.strict,
    )
    print(report)
    failed = [c.dataset for c in rows if not c.ok(args.tolerance, args.strict)]
    if failed:
        print(f"\nFAIL: the backends disagree beyond {args.tolerance:g} on {', '.join(failed)}", file=sys.stderr)
        return 1
    print(f"\nOK: both backends agree within {args.tolerance:g} on every dataset")
    return 0


if __name__ == "__main__":
    sys.exit(main())
