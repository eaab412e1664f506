"""Chinese item texts end to end: a tiny BERT whose WordPiece vocabulary `tokenizers` trained on Chinese titles,
through loading, training, recommend.py (readable UTF-8 in every output format) and the model card."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch
from huggingface_hub import ModelCard
from transformers import BertConfig, BertModel, BertTokenizerFast

from recsys_bert.arguments import parse_args
from recsys_bert.trainer import train
from tests.conftest import REPO_ROOT, reset_accelerate_state

# six shop categories, ten products each: a user buys within one or two categories
CATEGORIES = {
    "手机": ["华为", "小米", "荣耀", "一加", "魅族"],
    "茶叶": ["西湖龙井", "碧螺春", "铁观音", "普洱", "大红袍"],
    "图书": ["三体", "活着", "围城", "红楼梦", "平凡的世界"],
    "运动鞋": ["李宁", "安踏", "特步", "匹克", "回力"],
    "咖啡": ["云南小粒", "挂耳", "冷萃", "拿铁", "美式"],
    "耳机": ["降噪", "蓝牙", "头戴式", "入耳式", "骨传导"],
}
DETAILS = ["经典款", "新款"]


@pytest.fixture(scope="module")
def shop(tmp_path_factory) -> dict:
    folder = tmp_path_factory.mktemp("shop")
    rows = [
        {"item_id": f"{category}-{i * 2 + j:02d}", "title": f"{brand} {category} {detail}"}
        for category, brands in CATEGORIES.items()
        for i, brand in enumerate(brands)
        for j, detail in enumerate(DETAILS)
    ]
    items = pd.DataFrame(rows)
    items.to_csv(folder / "商品.csv", index=False)  # a Chinese file name: the data set's name
    rng = np.random.default_rng(0)
    by_category = {c: [r["item_id"] for r in rows if r["item_id"].startswith(c + "-")] for c in CATEGORIES}
    log = []
    for user in range(120):
        categories = rng.choice(list(CATEGORIES), 2, replace=False)
        chosen = [rng.choice(by_category[categories[int(t % 3 == 2)]]) for t in range(10)]  # mostly the first
        log += [(f"用户{user}", item, 1_600_000_000 + t) for t, item in enumerate(chosen)]
    pd.DataFrame(log, columns=["user_id", "item_id", "timestamp"]).to_csv(folder / "购买.csv", index=False)

    # a WordPiece vocabulary trained on the titles (every Chinese character its own piece), and a tiny BERT on it
    from tokenizers import BertWordPieceTokenizer

    pieces = BertWordPieceTokenizer(handle_chinese_chars=True, strip_accents=False, lowercase=True)
    pieces.train_from_iterator(items.title, vocab_size=500, min_frequency=1,
                               special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"])  # fmt: skip
    encoder = folder / "tiny-zh"
    encoder.mkdir()
    pieces.save_model(str(encoder))
    tokenizer = BertTokenizerFast.from_pretrained(encoder)  # from the vocab.txt just written
    tokenizer.save_pretrained(encoder)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64,
                        pad_token_id=tokenizer.pad_token_id)  # fmt: skip
    model = BertModel(config, add_pooling_layer=False)
    with torch.no_grad():
        model.embeddings.word_embeddings.weight.mul_(25.0)
    model.save_pretrained(encoder)
    return {"folder": folder, "items": folder / "商品.csv", "log": folder / "购买.csv", "encoder": str(encoder)}


def test_chinese_titles_train_recommend_and_publish_in_readable_utf8(shop, tmp_path):
    tokenizer = BertTokenizerFast.from_pretrained(shop["encoder"])
    ids = tokenizer("华为 手机 经典款")["input_ids"]
    assert tokenizer.unk_token_id not in ids and tokenizer.convert_ids_to_tokens(ids)[1:3] == ["华", "为"]

    data = ["--items", str(shop["items"]), "--interactions", str(shop["log"]), "--text_template", "{title}"]
    run = tmp_path / "模型"
    flags = [*data, "--encoder_name_or_path", shop["encoder"], "--output_dir", str(run), "--finetune_layers", "-1",
             "--max_steps", "60", "--per_device_train_batch_size", "32", "--num_negatives", "16",
             "--learning_rate", "3e-3", "--max_item_tokens", "16", "--eval_steps", "30", "--projection_dim", "0",
             "--exclude_history"]  # fmt: skip
    reset_accelerate_state()
    results = train(*parse_args(flags))
    test = results["test"]["history_excluded"]
    # users stay within their categories: 10 of 60 items share a user's main category, so chance is ~ 1/6
    assert test["recall@10"] > 0.5 and test["recall@10"] > results["baselines"]["popularity"]["history_excluded"][
        "recall@10"]  # fmt: skip
    assert results["protocol"]["data"] == "商品"

    metrics_text = (run / "metrics.json").read_text(encoding="utf-8")
    assert '"data": "商品"' in metrics_text and "\\u" not in metrics_text  # readable, not escaped
    card = ModelCard.load(run / "README.md")
    assert card.text.startswith("\n# recsys-bert on 商品") and "\\u" not in (run / "README.md").read_text("utf-8")

    users = tmp_path / "用户.jsonl"
    users.write_text(
        json.dumps({"user_id": "新用户", "history": ["华为-00", "小米 手机 新款"]}, ensure_ascii=False) + "\n"
        + json.dumps({"user_id": "茶客", "history": ["一杯 龙井 绿茶"]}, ensure_ascii=False) + "\n",
        encoding="utf-8",
    )  # fmt: skip
    outputs = {}
    for suffix in (".jsonl", ".csv", ".parquet"):
        output = tmp_path / f"推荐{suffix}"
        result = subprocess.run(
            [sys.executable, "recommend.py", "--model", str(run), "--items", str(shop["items"]), "--text_template",
             "{title}", "--users", str(users), "--top_k", "60", "--exclude_history", "--output", str(output),
             "--vector_cache", "none"],
            cwd=REPO_ROOT, capture_output=True, text=True, encoding="utf-8", timeout=300,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr[-3000:]
        outputs[suffix] = output
    for suffix in (".jsonl", ".csv"):
        text = outputs[suffix].read_bytes().decode("utf-8")  # UTF-8, and readable: the characters themselves
        assert "新用户" in text and "茶客" in text and "\\u" not in text
    frame = pd.read_parquet(outputs[".parquet"]).set_index("user_id")
    lines = [json.loads(line) for line in outputs[".jsonl"].read_text(encoding="utf-8").splitlines()]
    assert {line["user_id"]: line["item_ids"] for line in lines} == {u: list(v) for u, v in frame.item_ids.items()}
    assert "华为-00" not in frame.item_ids["新用户"]  # excluded: the user has it
    # the phone buyer ranks phones higher than the tea drinker (a free text never seen) does, and tea lower

    def mean_place(user: str, category: str) -> float:
        return float(np.mean([i for i, item in enumerate(frame.item_ids[user]) if item.startswith(category + "-")]))

    assert mean_place("新用户", "手机") < mean_place("茶客", "手机")
    assert mean_place("茶客", "茶叶") < mean_place("新用户", "茶叶")
