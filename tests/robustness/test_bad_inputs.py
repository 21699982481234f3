"""Bad input is one line, everywhere: a table of mistakes across every magic.

Each row is (the cell a user types, a fragment of the one line they must get).
For every row, in a real IPython shell with the extension loaded:
- the cell fails with exactly one printed line, `UsageError: ...`, holding the fragment
  (no traceback, no progress lines, nothing else);
- no run is recorded in the run store;
- no new file appears in the llm-magics home folder (cache, runs, indexes).

New methods add their rows (one list per magic below, or a new one added to ROWS):
a mistake a user can make with the method's options or data, and the words of
the line that should answer it. Rows that need a model name `$BERT` (a tiny
encoder) or `$LLAMA` (a tiny causal LM); `$INPUTS` is a folder of bad files
(see `inputs`); notebook variables are set in `namespace`. Keep rows fast:
a check that can run before a model loads should.
"""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from tests.helpers import one_usage_line

ICL_BODY = "\nReview: {text}\nSentiment: {label}"

PROBE = [
    ("%probe --modle minilm", "did you mean --model?"),
    ("%probe --model $BERT --data df --layer x", "--layer"),
    ("%probe --model $BERT --data df --pooling maxx", "--pooling 'maxx' is not valid"),
    ("%probe --model $BERT --data df --classifier svm", "--classifier 'svm' is not valid"),
    ("%probe --model $BERT --data df --C 0", "--C: must be > 0"),
    ("%probe --model $BERT --data df --C nan", "--C: must be a finite number"),
    ("%probe --model $BERT --data df --C inf", "--C: must be a finite number"),
    ("%probe --model $BERT --data df --C -inf", "--C: must be a finite number"),
    ("%probe --model $BERT --data df --C -1e-3", "--C: must be > 0"),
    ("%probe --model $BERT --data df --C 1e999", "--C: must be a finite number"),
    ("%probe --model $BERT --data df --alpha nan", "--alpha: must be a finite number"),
    ("%probe --model $BERT --data df --hidden 0", "--hidden"),
    ("%probe --model $BERT --data df --hidden a,b", "--hidden"),
    ("%probe --model $BERT --data df --trees 0", "--trees: must be > 0"),
    ("%probe --model $BERT --data df --max-depth -1", "--max-depth: must be > 0"),
    ("%probe --model $BERT --data df --max-iter 1.5", "--max-iter expects an integer"),
    ("%probe --model $BERT --data df --max-length 0", "--max-length: must be > 0"),
    ("%probe --model $BERT --data df --batch-tokens 0", "--batch-tokens: must be > 0"),
    ("%probe --model $BERT --data df --seed -1", "--seed: is a seed"),
    ("%probe --model $BERT --data df --seed 4294967296", "--seed: is a seed"),
    ("%probe --model $BERT --data df --seed nan", "--seed expects an integer"),
    ("%probe --model $BERT --data df --val-size 0", "--val-size: must be between 0 and 1"),
    ("%probe --model $BERT --data df --val-size 1", "--val-size: must be between 0 and 1"),
    ("%probe --model $BERT --data df --test-size nan", "--test-size: must be a finite number"),
    ("%probe --model $BERT --data df --test-size inf", "--test-size: must be a finite number"),
    ("%probe --model $BERT --data df --out 1x", "not a valid Python variable name"),
    ("%probe --model $BERT --data df --dtype float8", "--dtype 'float8' is not valid"),
    ("%probe --model $BERT --data df --cache maybe", "unexpected argument 'maybe'"),
    ("%probe --model $BERT --data df extra", "unexpected argument 'extra'"),
    ("%probe --model $BERT --data 'unclosed", "check the quotes"),
    ("%probe --model nosuch --data df", "unknown model 'nosuch'"),
    ("%probe --model $BERT --data nothing_here", "no variable named 'nothing_here'"),
    ("%probe --model $BERT --data /no/such.csv", "does not exist"),
    ("%probe --model $BERT --data df --label stars", "--label 'stars': no such column"),
    ("%probe --model $BERT --data df --text stars", "--text 'stars': no such column"),
    ("%probe --model $BERT --data dupe", "duplicated column names ('label')"),
    ("%probe --model $BERT --data $INPUTS/extra_fields.csv", "line 2 has 3 fields but the header has 2"),
    ("%probe --model $BERT --data $INPUTS/ragged.csv", "line 4 has 3 fields but the header has 2"),
    ("%probe --model $BERT --data $INPUTS/ragged.tsv", "line 3 has 3 fields but the header has 2"),
    ("%probe --model $BERT --data one_class", "single class"),
    ("%probe --model $BERT --data floaty", "continuous numbers"),
    ("%probe --model $BERT --data inflab", "label column 'label' holds infinite numbers"),
    ("%probe --model $BERT --data dictlab", "label column 'label' holds dict values"),
    ("%probe --model $BERT --data df --label text", "--text and --label both name column 'text'"),
    ("%probe --model $BERT --data empty", "empty"),
    ("%probe --model $BERT --data notatable", "cannot use a int"),
    ("%probe --model $BERT --data $INPUTS", "is a folder"),
    ("%probe --model $BERT --data $INPUTS/broken.json", "could not read"),
    ("%probe --model $BERT --data $INPUTS/sheet.xlsx", "cannot read sheet.xlsx"),
    ("%probe --model $BERT --data df --test unseen", "label 'maybe' in column 'label' is not among"),
    ("%%probe --data df\nbody", "takes no cell body"),
]

ICL = [
    ("%%icl --model $LLAMA --data df --temperature nan" + ICL_BODY, "--temperature: must be a finite number"),
    ("%%icl --model $LLAMA --data df --temperature inf" + ICL_BODY, "--temperature: must be a finite number"),
    ("%%icl --model $LLAMA --data df --temperature -1" + ICL_BODY, "--temperature: must be ≥ 0"),
    ("%%icl --model $LLAMA --data df --top-p 0" + ICL_BODY, "--top-p: must be in (0, 1]"),
    ("%%icl --model $LLAMA --data df --top-p 1.5" + ICL_BODY, "--top-p: must be in (0, 1]"),
    ("%%icl --model $LLAMA --data df --top-p nan" + ICL_BODY, "--top-p: must be a finite number"),
    ("%%icl --model $LLAMA --data df --shots -1" + ICL_BODY, "--shots: must be ≥ 0"),
    ("%%icl --model $LLAMA --data df --shots 2.5" + ICL_BODY, "--shots expects an integer"),
    ("%%icl --model $LLAMA --data df --select best" + ICL_BODY, "--select 'best' is not valid"),
    ("%%icl --model $LLAMA --data df --score max" + ICL_BODY, "--score 'max' is not valid"),
    ("%%icl --model $LLAMA --data df --limit 0" + ICL_BODY, "--limit: must be > 0"),
    ("%%icl --model $LLAMA --data df --max-tokens 0" + ICL_BODY, "--max-tokens: must be > 0"),
    ("%%icl --model $LLAMA --data df --max-tokens 600" + ICL_BODY, "--max-tokens 600 is not below"),
    ("%%icl --model $LLAMA --data df --seed -5" + ICL_BODY, "--seed: is a seed"),
    ("%%icl --model $LLAMA --data df --seed 99999999999" + ICL_BODY, "--seed: is a seed"),
    ("%%icl --model $LLAMA --data df --top-k 0" + ICL_BODY, "--top-k: must be > 0"),
    ("%%icl --model $LLAMA --data df --api-timeout nan" + ICL_BODY, "--api-timeout: must be a finite number"),
    ("%%icl --model $LLAMA --data df --api-timeout 0" + ICL_BODY, "--api-timeout: must be > 0"),
    ("%%icl --model $LLAMA --data df --api-base ftp://host/v1" + ICL_BODY, "--api-base"),
    ("%%icl --model $LLAMA --data df --api-key-env 1BAD" + ICL_BODY, "--api-key-env"),
    ("%%icl --model $LLAMA --data df --api-style rest" + ICL_BODY, "--api-style 'rest' is not valid"),
    ("%%icl --model $LLAMA --data df --batch-tokens -3" + ICL_BODY, "--batch-tokens: must be > 0"),
    ("%%icl --model $LLAMA --data df --index 'bad name!'" + ICL_BODY, "--index"),
    ("%%icl --model $LLAMA --data df --zero-shot maybe" + ICL_BODY, "unexpected argument 'maybe'"),
    ("%%icl --model $LLAMA --data df --frobnicate" + ICL_BODY, "unknown option --frobnicate"),
    ("%%icl --model $LLAMA --data nothing_here" + ICL_BODY, "no variable named 'nothing_here'"),
    ("%%icl --model $LLAMA --data dupe" + ICL_BODY, "duplicated column names ('label')"),
    ("%%icl --model $LLAMA --data $INPUTS/extra_fields.csv" + ICL_BODY, "line 2 has 3 fields"),
    ("%%icl --model nosuch --data df" + ICL_BODY, "unknown model 'nosuch'"),
    ("%%icl --model $LLAMA --data df --index nosuch_ix\n{context}" + ICL_BODY, "nosuch_ix"),
]

INDEX = [
    ("%index bild ix --from docs", "did you mean build?"),
    ("%index build", "NAME"),
    ("%index build ix", "--from"),
    ("%index build bad/name --from docs", "bad/name"),
    ("%index build ix --from docs --chunk 0", "--chunk: must be > 0"),
    ("%index build ix --from docs --overlap -1", "--overlap: must be ≥ 0"),
    ("%index build ix --from docs --kind tree", "--kind 'tree' is not valid"),
    ("%index build ix --from docs --nlist 0", "--nlist: must be > 0"),
    ("%index build ix --from docs --nprobe -2", "--nprobe: must be > 0"),
    ("%index build ix --from docs --hnsw-m 0", "--hnsw-m: must be > 0"),
    ("%index build ix --from docs --ef-construction 0", "--ef-construction: must be > 0"),
    ("%index build ix --from docs --ef-search 1.5", "--ef-search expects an integer"),
    ("%index build ix --from docs --precision float8", "--precision 'float8' is not valid"),
    ("%index build ix --from docs --batch-tokens 0", "--batch-tokens: must be > 0"),
    ("%index build ix --from docs --out 2x", "not a valid Python variable name"),
    ("%index build ix --from /no/such/folder --model $BERT", "does not exist"),
    ("%index build ix --from docs --model nosuch", "unknown model 'nosuch'"),
    ("%index build ix --from notatable --model $BERT", "--from: cannot use a int"),
    ("%index add nosuch_ix --from docs", "nosuch_ix"),
    ("%index query nosuch_ix hello", "nosuch_ix"),
    ("%index query ix hello -k 0", "--k: must be > 0"),
    ("%index query ix hello --mode fuzzy", "--mode 'fuzzy' is not valid"),
    ("%index query ix hello --rrf-k 0", "--rrf-k: must be > 0"),
    ("%index query ix hello --candidates -1", "--candidates: must be > 0"),
    ("%index query ix", "QUERY"),
    ("%index delete nosuch_ix a.txt", "nosuch_ix"),
    ("%index delete ix", "SOURCE"),
    ("%index info nosuch_ix", "nosuch_ix"),
    ("%index drop nosuch_ix", "nosuch_ix"),
    ("%index drop 'a b'", "'a b'"),
    ("%index list extra", "unexpected argument 'extra'"),
    ("%index --frob", "unknown option --frob"),
]

FINETUNE = [
    ("%finetune --model $BERT --data df --lr nan", "--lr: must be a finite number"),
    ("%finetune --model $BERT --data df --lr inf", "--lr: must be a finite number"),
    ("%finetune --model $BERT --data df --lr 0", "--lr: must be > 0"),
    ("%finetune --model $BERT --data df --max-grad-norm nan", "--max-grad-norm: must be a finite number"),
    ("%finetune --model $BERT --data df --max-grad-norm -1", "--max-grad-norm: must be ≥ 0"),
    ("%finetune --model $BERT --data df --weight-decay inf", "--weight-decay: must be a finite number"),
    ("%finetune --model $BERT --data df --warmup 1", "--warmup"),
    ("%finetune --model $BERT --data df --warmup nan", "--warmup: must be a finite number"),
    ("%finetune --model $BERT --data df --epochs 0", "--epochs: must be > 0"),
    ("%finetune --model $BERT --data df --epochs 2.5", "--epochs expects an integer"),
    ("%finetune --model $BERT --data df --batch-size 0", "--batch-size: must be > 0"),
    ("%finetune --model $BERT --data df --batch-size 99999999999999999999999", "out of range"),
    ("%finetune --model $BERT --data df --grad-accum -1", "--grad-accum: must be > 0"),
    ("%finetune --model $BERT --data df --eval-every 0", "--eval-every: must be > 0"),
    ("%finetune --model $BERT --data df --patience 0", "--patience: must be > 0"),
    ("%finetune --model $BERT --data df --max-length 0", "--max-length: must be > 0"),
    ("%finetune --model $BERT --data df --scheduler step", "--scheduler 'step' is not valid"),
    ("%finetune --model $BERT --data df --train some", "--train"),
    ("%finetune --model $BERT --data df --task regress", "--task 'regress' is not valid"),
    ("%finetune --model $BERT --data df --head-dropout 1", "--head-dropout: is a dropout probability"),
    ("%finetune --model $BERT --data df --head-dropout -0.1", "--head-dropout: is a dropout probability"),
    ("%finetune --model $BERT --data df --head-dropout nan", "--head-dropout: must be a finite number"),
    ("%finetune --model $BERT --data df --pooling maxx", "--pooling 'maxx' is not valid"),
    ("%finetune --model $BERT --data df --seed -1", "--seed: is a seed"),
    ("%finetune --model $BERT --data df --resume nosuch", "nosuch"),
    ("%finetune --model $BERT --data df --bg maybe", "unexpected argument 'maybe'"),
    ("%finetune --model $BERT --data sft --task sft", "needs a decoder"),
    ("%finetune --model $LLAMA --data df --task sft", "--task sft needs a prompt column"),
    ("%finetune --model $LLAMA --data sft --task sft --response prompt", "--prompt and --response both name"),
    ("%finetune --model $BERT --data dupe", "duplicated column names ('label')"),
    ("%finetune --model $BERT --data $INPUTS/extra_fields.csv", "line 2 has 3 fields"),
    ("%finetune --model $BERT --data floaty", "continuous numbers"),
    ("%finetune --model $BERT --data one_class", "single class"),
    ("%finetune --model $BERT --data df --test unseen", "is not among the training labels"),
]

LORA = [
    ("%lora --model $BERT --data df --alpha inf", "--alpha: must be a finite number"),
    ("%lora --model $BERT --data df --alpha nan", "--alpha: must be a finite number"),
    ("%lora --model $BERT --data df --alpha 0", "--alpha: must be > 0"),
    ("%lora --model $BERT --data df --dropout 1", "--dropout: is a dropout probability"),
    ("%lora --model $BERT --data df --dropout -0.5", "--dropout: is a dropout probability"),
    ("%lora --model $BERT --data df --dropout nan", "--dropout: must be a finite number"),
    ("%lora --model $BERT --data df --r 0", "--r: must be > 0"),
    ("%lora --model $BERT --data df --r 1.5", "--r expects an integer"),
    ("%lora --model $BERT --data df --method loraa", "did you mean lora?"),
    ("%lora --model $BERT --data df --target-r 0", "--target-r: must be > 0"),
    ("%lora --model $BERT --data df --block-size 0", "--block-size: must be > 0"),
    ("%lora --model $BERT --data df --virtual-tokens 0", "--virtual-tokens: must be > 0"),
    ("%lora --model $BERT --data df --method prefix --virtual-tokens 99999999", "--virtual-tokens 99999999 is more "
                                                                                "than half of the model's context"),
    ("%lora --model '' --data df", "the model name is empty"),
    ("%lora --model $BERT --data df --encoder-hidden 0", "--encoder-hidden: must be > 0"),
    ("%lora --model $BERT --data df --bits 3", "--bits: is 4 or 8"),
    ("%lora --model $BERT --data df --name 'bad name'", "is not a valid name"),
    ("%lora --model $BERT --data df --lr nan", "--lr: must be a finite number"),
    ("%lora --model $BERT --data df --max-grad-norm inf", "--max-grad-norm: must be a finite number"),
    ("%lora --model $BERT --data dupe", "duplicated column names ('label')"),
    ("%lora adaptrs", "did you mean adapters?"),
    ("%lora save", "NAME"),
    ("%lora save nosuch $INPUTS/out", "nosuch"),
    ("%lora load /no/such/folder", "/no/such/folder"),
    ("%lora load $INPUTS", "$INPUTS"),
    ("%lora load $INPUTS --as 'bad name'", "is not a valid name"),
    ("%lora use nosuch", "nosuch"),
    ("%lora unload nosuch", "nosuch"),
    ("%lora merge nosuch", "nosuch"),
    ("%lora adapters extra", "unexpected argument 'extra'"),
]

LLM = [
    ("%llm bogus", "unknown command 'bogus'"),
    ("%llm runs --limit 0", "--limit: must be > 0"),
    ("%llm runs --limit nan", "--limit expects an integer"),
    ("%llm runs --method", "expected one argument"),
    ("%llm runs extra", "unexpected argument 'extra'"),
    ("%llm compare --metrc x", "did you mean --metric?"),
    ("%llm compare --limit -1", "--limit: must be > 0"),
    ("%llm free now", "takes no arguments"),
    ("%llm models x", "takes no arguments"),
    ("%llm device x", "takes no arguments"),
    ("%llm methods x", "takes no arguments"),
    ("%llm reload x", "takes no arguments"),
]

RLHF = [
    ("%rlhf rewrd --data pairs", "did you mean reward?"),
    ("%rlhf --limit 0", "--limit: must be > 0"),
    ("%rlhf reward --model $BERT --data pairs --lr nan", "--lr: must be a finite number"),
    ("%rlhf reward --model $BERT --data pairs --alpha inf", "--alpha: must be a finite number"),
    ("%rlhf reward --model $BERT --data pairs --dropout 1", "--dropout: is a dropout probability"),
    ("%rlhf reward --model $BERT --data pairs --seed -1", "--seed: is a seed"),
    ("%rlhf reward --model $BERT --data pairs --val-size nan", "--val-size: must be a finite number"),
    ("%rlhf reward --model $BERT --data pairs --max-rows 0", "--max-rows: must be > 0"),
    ("%rlhf reward --model $BERT --data pairs --train prompt", "--train"),
    ("%rlhf reward --model $BERT --data nothing_here", "no variable named 'nothing_here'"),
]

ROWS = PROBE + ICL + INDEX + FINETUNE + LORA + LLM + RLHF


def test_the_table_covers_every_built_in_magic_with_at_least_100_rows():
    assert len(ROWS) >= 100
    magics = {line.lstrip("%").split()[0] for line, _ in ROWS}
    assert {"probe", "icl", "index", "finetune", "lora", "llm"} <= magics
    for method, commands in (("index", ("build", "add", "query", "delete", "info", "drop", "list")),
                             ("lora", ("save", "load", "use", "merge", "unload", "adapters")),
                             ("llm", ("runs", "compare", "free", "models", "device", "methods", "reload"))):
        seen = {line.split()[1] for line, _ in ROWS if line.startswith(f"%{method} ") and len(line.split()) > 1}
        assert set(commands) <= seen, (method, set(commands) - seen)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    """A folder of files a user might wrongly pass (it is neither data nor an adapter itself)."""
    folder = tmp_path_factory.mktemp("bad-inputs")
    # The first row has a comma in an unquoted text: pandas would make "great" the index and shift
    # the columns (text 'really', label 1) without a word.
    (folder / "extra_fields.csv").write_text("text,label\n"
                                             "great, really,1\n"
                                             "a fine film,1\n"
                                             "a dull film,0\n")
    (folder / "ragged.tsv").write_text("text\tlabel\na fine film\t1\na\tdull film\t0\n")
    (folder / "ragged.csv").write_text("text,label\na fine film,1\na dull film,0\nbad, bad,0\n")
    (folder / "broken.json").write_text("{not json")
    (folder / "sheet.xlsx").write_bytes(b"PK\x03\x04 not really a workbook")
    return folder


def namespace(demo) -> dict:
    train, test = demo
    return {
        "df": train,
        "unseen": pd.DataFrame({"text": ["a fine film", "so so"], "label": [train["label"].iloc[0], "maybe"]}),
        "dupe": pd.DataFrame([["a fine film", 1, 0], ["a dull film", 0, 1]] * 10,
                             columns=["text", "label", "label"]),
        "one_class": pd.DataFrame({"text": [f"film {i}" for i in range(20)], "label": ["pos"] * 20}),
        "floaty": pd.DataFrame({"text": [f"film {i}" for i in range(20)], "label": [i / 7 for i in range(20)]}),
        "empty": pd.DataFrame({"text": [], "label": []}),
        "notatable": 42,
        "inflab": pd.DataFrame({"text": [f"film {i}" for i in range(20)], "label": [float("inf"), 1.0] * 10}),
        "dictlab": pd.DataFrame({"text": [f"film {i}" for i in range(20)], "label": [{"a": 1}, {"b": 2}] * 10}),
        "pairs": pd.DataFrame({"prompt": [f"q{i}" for i in range(20)], "chosen": ["yes"] * 20,
                               "rejected": ["no"] * 20}),
        "sft": pd.DataFrame({"prompt": [f"say {i}" for i in range(20)], "response": [str(i) for i in range(20)]}),
        "docs": ["The first document talks about films.", "The second one is about music."],
    }


def files_under(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()} if folder.exists() else set()


@pytest.mark.parametrize("line, fragment", ROWS, ids=[line.split("\n")[0][:70] for line, _ in ROWS])
def test_a_bad_input_is_one_usage_line(shell, capsys, home, store, demo, tiny_bert, tiny_llama, inputs,
                                       line, fragment):
    shell.user_ns.update(namespace(demo))
    cell = line.replace("$BERT", str(tiny_bert)).replace("$LLAMA", str(tiny_llama)).replace("$INPUTS", str(inputs))
    fragment = fragment.replace("$INPUTS", str(inputs))
    before = files_under(home.cache_dir)
    said = one_usage_line(shell, capsys, cell)
    assert fragment in said, said
    assert store.list() == [], "a run was recorded"
    assert files_under(home.cache_dir) == before, "files were left in the home folder"


def test_a_json_file_of_mixed_label_kinds_trains_two_classes_not_four(tmp_path):
    """Labels mixing 1 and "1" (here a JSON list) are one class each, with a note saying so."""
    from llm_magics.data import prepare_classification
    rows = [{"text": f"film number {i}", "label": [1, "1", 0, "0"][i % 4]} for i in range(40)]
    (tmp_path / "mixed.json").write_text(json.dumps(rows))
    data = prepare_classification(str(tmp_path / "mixed.json"))
    assert data.label_names == ["0", "1"]
    assert any("read them all as integers" in note for note in data.notes)


@pytest.fixture(scope="module")
def trained_adapter(tiny_bert, tmp_path_factory):
    """One tiny LoRA adapter in the session, for the rows of %lora save that need one."""
    from llm_magics import api
    from llm_magics.demo import sentiment_splits
    api.lora(model=str(tiny_bert), data=sentiment_splits(60, 20)[0], epochs=1, name="bad_inputs_adapter",
             dtype="float32", batch_size=16)
    return "bad_inputs_adapter"


@pytest.mark.parametrize("target, fragment", [
    ("$INPUTS/extra_fields.csv", "is a file; %lora save writes a folder"),
    ("/proc/x", "cannot write /proc/x"),
    ("$INPUTS/extra_fields.csv/sub", "cannot write"),
])
def test_lora_save_to_a_path_that_cannot_be_a_folder_is_one_line(shell, capsys, store, inputs, trained_adapter,
                                                                   target, fragment):
    target = target.replace("$INPUTS", str(inputs))
    capsys.readouterr()
    result = shell.run_cell(f"%lora save {trained_adapter} {target}")
    captured = capsys.readouterr()
    lines = [x for x in (captured.out + captured.err).splitlines() if x.strip()]
    assert not result.success and len(lines) == 1 and lines[0].startswith("UsageError:"), lines
    assert fragment in lines[0] and (inputs / "extra_fields.csv").is_file()
