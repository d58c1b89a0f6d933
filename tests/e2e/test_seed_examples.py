"""The seed documents' code examples, run as written except for the model name.

The seeds load "gpt-3" and "transformer-translate", which llmos does not ship: as written,
those lines raise UnknownModel listing the models that exist (checked below), so each
example runs with "smollm2" (the default model) substituted. Seed 002 imports a different
package (`from llmasos import LLM; LLM.from_pretrained(...)`); its `model.summarize(text)`
call runs on an llmos model instead. Seed 000's first example (generate_text) runs in
tests/llmos/test_load_model.py.
"""

from __future__ import annotations

import pytest

import llmos

SEED_000_TRANSLATE = '''
# 导入 LLMOS 库
import llmos

# 加载机器翻译模型
model = llmos.load_model("smollm2")

# 翻译文本
translated_text = model.translate("你好，世界！", target_lang="en")

# 打印翻译结果
print(translated_text)
'''

SEED_002_SUMMARIZE = '''
import llmos

# 加载预训练模型
model = llmos.load_model("smollm2")

# 输入文本
text = "这是一篇关于 LLMasOS 的文章，介绍了 LLMasOS 的背景、核心概念、算法原理、应用场景等内容。"

# 生成摘要
summary = model.summarize(text)

# 打印摘要
print(summary)
'''

SEED_004_LLMOS = '''
from llmos import LLMOS

# 加载模型
llmos = LLMOS()
model = llmos.load_model("smollm2")

# 生成文本
text = model.generate_text(prompt="The world is")

# 打印生成的文本
print(text)
'''


@pytest.mark.model
@pytest.mark.parametrize("code", [SEED_000_TRANSLATE, SEED_002_SUMMARIZE, SEED_004_LLMOS],
                         ids=["translate", "summarize", "LLMOS"])
def test_seed_example_runs(code, capsys, smollm2):
    namespace: dict = {}
    exec(compile(code, "<seed>", "exec"), namespace)
    printed = capsys.readouterr().out.strip()
    assert printed and len(printed.split()) >= 2, printed
    if "LLMOS()" in code:
        namespace["llmos"].close()


@pytest.mark.model
def test_the_translation_seed_gives_english(smollm2):
    text = llmos.load_model("smollm2").translate("你好，世界！", target_lang="en")
    assert text.strip() and text.isascii(), text


@pytest.mark.parametrize("name", ["gpt-3", "transformer-translate"])
def test_the_seeds_model_names_as_written_list_the_real_ones(name):
    with pytest.raises(llmos.UnknownModel) as err:
        llmos.load_model(name)
    assert name in str(err.value) and "smollm2" in str(err.value)
