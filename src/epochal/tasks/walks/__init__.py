"""Graph-walk language modelling with jumper rules (seeds 000 and 001).

graph (SBM in CSR, jumpers, reach sets), corpus (rule-obeying walks, split, npz
files), dataset (chunks of context + 1), model (causal transformer, extraction),
generate (greedy generation with a KV cache), compliance (edge and rule
compliance), task (the registered ``walks`` task).
"""

from epochal.tasks.walks.compliance import evaluate_compliance
from epochal.tasks.walks.corpus import Corpus, generate_walks, load_corpus, load_graph
from epochal.tasks.walks.dataset import WalkDataset, chunk_walks
from epochal.tasks.walks.generate import greedy_generate
from epochal.tasks.walks.graph import Graph, Jumper, sample_sbm
from epochal.tasks.walks.model import Extraction, ExtractionMode, TransformerLM

__all__ = [
    "Corpus", "Extraction", "ExtractionMode", "Graph", "Jumper", "TransformerLM", "WalkDataset",
    "chunk_walks", "evaluate_compliance", "generate_walks", "greedy_generate", "load_corpus",
    "load_graph", "sample_sbm",
]
