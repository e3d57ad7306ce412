# %% [markdown]
# # The Flair NER tutorial, redone with annotator
#
# The original tutorial downloads CoNLL++, prints the split sizes, trains a BiLSTM-CRF on
# stacked GloVe + Flair embeddings, evaluates it and tags a sentence. Here every step is one
# call of this package; the `offline` preset replaces the embeddings that need a download.
# Run it as a script (`python examples/tutorial.py`) or cell by cell in an editor that reads
# `# %%` cells. Knobs: TUTORIAL_SOURCE (local copy of CoNLL++), TUTORIAL_EPOCHS,
# TUTORIAL_TRAIN_DIR (train on another column corpus, e.g. a small sample), TUTORIAL_OUT.

# %%
import os
from pathlib import Path

from annotator import Annotator, annotate
from annotator.corpus import corpus_stats, fetch_corpus
from annotator.evaluation import evaluate, format_table
from annotator.tagging.engines import tagged_string
from annotator.training.config import resolve_config
from annotator.training.train import train

source = os.environ.get("TUTORIAL_SOURCE")  # None: download from the CrossWeigh repository
out = Path(os.environ.get("TUTORIAL_OUT", "runs/tutorial"))
epochs = int(os.environ.get("TUTORIAL_EPOCHS", "50"))

# %% 1. Fetch CoNLL++ (train/dev from CoNLL-2003, the corrected CrossWeigh test set)
corpus_dir = out / "conllpp"
fetch_corpus("conllpp", corpus_dir, source=source)

# %% 2. The split sizes the tutorial prints
stats = corpus_stats(corpus_dir)
print(f"{'split':<12}{'sentences':>10}")
for split, name in (("train", "Train"), ("test", "Test"), ("dev", "Development")):
    print(f"{name:<12}{stats[split].sentences:>10}")

# %% 3. Train (the tutorial's recipe needs GloVe/Flair downloads: preset "seed"; this is "offline")
train_dir = Path(os.environ.get("TUTORIAL_TRAIN_DIR", corpus_dir))
config = resolve_config("offline", overrides={"max_epochs": epochs})
model_dir = out / "model"
result = train(train_dir, model_dir, config, resume=(model_dir / "checkpoint.pt").exists())
print(f"best dev F1 {result.best_dev_f1:.4f} at epoch {result.best_epoch}")

# %% 4. Evaluate on the CoNLL++ test split
scores = evaluate(model_dir, corpus_dir, split="test")
print(format_table(scores))

# %% 5. Tag a sentence
annotator = Annotator(str(model_dir))
sentence = "My name is Eugene, I live in Singapore, I work for DSO."
print(tagged_string(sentence, annotator.annotate_text(sentence)))

# %% 6. Annotate a folder of documents into Parquet
summary = annotate(["examples/letters"], str(out / "letters.parquet"), annotator=annotator)
print(summary.line())
