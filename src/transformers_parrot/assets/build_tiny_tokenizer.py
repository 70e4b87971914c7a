"""Build the tiny multilingual Qwen2-style byte-level BPE tokenizer fixture.

Deterministic: trains with the ``tokenizers`` library on the corpus embedded below (English, Chinese, Portuguese,
Arabic, Turkish, Russian; colours, shapes, counts, positions, yes/no and the six MMMB instructions) and writes
``tokenizer.json``, ``tokenizer_config.json``, ``special_tokens_map.json`` and ``chat_template.jinja``.

    python -m transformers_parrot.assets.build_tiny_tokenizer                      # the shipped fixture
    python -m transformers_parrot.assets.build_tiny_tokenizer --no-image-token --output DIR  # "original" style

Special tokens follow Qwen1.5: ``<|endoftext|>`` (pad/unk), ``<|im_start|>``, ``<|im_end|>`` (eos), all placed after
the learned vocabulary; the HF-native variant adds ``<image>`` right after them (the original Qwen tokenizer has no
image token: the port adds it, and its id must fall in the spare embedding rows).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from transformers_parrot.models.parrot.processing_parrot import IM_END, IM_START, IMAGE_TOKEN

VOCAB_SIZE = 3000  # learned tokens (256 byte symbols + merges); special tokens come after

SPECIAL_TOKENS = ["<|endoftext|>", IM_START, IM_END]
PRETOKENIZE_REGEX = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
DEFAULT_OUTPUT = Path(__file__).resolve().parent / "tiny_tokenizer"

MMMB_INSTRUCTIONS = [
    "Answer with the option's letter from the given choices directly.",
    "请直接用给定选项中的选项字母回答。",
    "Responda diretamente com a letra da opção das escolhas dadas.",
    "أجب مباشرةً بحرف الخيار من الاختيارات المعطاة.",
    "Ответьте буквой варианта из предложенных вариантов напрямую.",
    "Verilen seçeneklerden doğrudan seçeneğin harfi ile cevap verin.",
]

# Per language: words for colours, shapes, counts (1..5), positions, yes/no, plus free sentences.
LEXICON = {
    "en": dict(
        colours=["red", "blue", "green", "yellow", "black", "white", "orange", "purple"],
        shapes=["circle", "square", "triangle", "star", "rectangle", "line"],
        counts=["one", "two", "three", "four", "five"],
        positions=["left", "right", "top", "bottom", "center"],
        yes="Yes",
        no="No",
        templates=[
            "There is a {colour} {shape} on the {position}.",
            "How many {shape}s are there? {count}.",
            "Is the {shape} {colour}? {yn}.",
            "The image shows {count} {colour} shapes.",
        ],
        sentences=[
            "What is in the image?",
            "Describe the picture in detail.",
            "The cat sits on the mat.",
            "A man is riding a bicycle in the park.",
            "Which option is correct?",
            "The answer is A.",
            "You are a helpful assistant.",
            "Please think step by step.",
            "I do not know.",
            "The sky is blue and the grass is green.",
            "Question: what colour is the circle?",
        ],
    ),
    "zh": dict(
        colours=["红色", "蓝色", "绿色", "黄色", "黑色", "白色", "橙色", "紫色"],
        shapes=["圆形", "正方形", "三角形", "星形", "长方形", "线条"],
        counts=["一", "二", "三", "四", "五"],
        positions=["左边", "右边", "上面", "下面", "中间"],
        yes="是",
        no="否",
        templates=[
            "{position}有一个{colour}的{shape}。",
            "图中有几个{shape}？{count}个。",
            "这个{shape}是{colour}的吗？{yn}。",
            "图片显示了{count}个{colour}的形状。",
        ],
        sentences=[
            "图片里有什么？",
            "请详细描述这张图片。",
            "猫坐在垫子上。",
            "一个男人在公园里骑自行车。",
            "哪个选项是正确的？",
            "答案是A。",
            "你是一个有用的助手。",
            "请一步一步地思考。",
            "我不知道。",
            "天空是蓝色的，草是绿色的。",
            "问题：圆形是什么颜色？",
        ],
    ),
    "pt": dict(
        colours=["vermelho", "azul", "verde", "amarelo", "preto", "branco", "laranja", "roxo"],
        shapes=["círculo", "quadrado", "triângulo", "estrela", "retângulo", "linha"],
        counts=["um", "dois", "três", "quatro", "cinco"],
        positions=["esquerda", "direita", "cima", "baixo", "centro"],
        yes="Sim",
        no="Não",
        templates=[
            "Há um {shape} {colour} à {position}.",
            "Quantos {shape}s existem? {count}.",
            "O {shape} é {colour}? {yn}.",
            "A imagem mostra {count} formas de cor {colour}.",
        ],
        sentences=[
            "O que há na imagem?",
            "Descreva a imagem em detalhes.",
            "O gato está sentado no tapete.",
            "Um homem anda de bicicleta no parque.",
            "Qual opção está correta?",
            "A resposta é A.",
            "Você é um assistente útil.",
            "Pense passo a passo, por favor.",
            "Eu não sei.",
            "O céu é azul e a grama é verde.",
            "Pergunta: qual é a cor do círculo?",
        ],
    ),
    "ar": dict(
        colours=["أحمر", "أزرق", "أخضر", "أصفر", "أسود", "أبيض", "برتقالي", "بنفسجي"],
        shapes=["دائرة", "مربع", "مثلث", "نجمة", "مستطيل", "خط"],
        counts=["واحد", "اثنان", "ثلاثة", "أربعة", "خمسة"],
        positions=["اليسار", "اليمين", "الأعلى", "الأسفل", "الوسط"],
        yes="نعم",
        no="لا",
        templates=[
            "يوجد {shape} {colour} على {position}.",
            "كم عدد الأشكال {shape}؟ {count}.",
            "هل {shape} لونه {colour}؟ {yn}.",
            "تظهر الصورة {count} أشكال باللون {colour}.",
        ],
        sentences=[
            "ماذا يوجد في الصورة؟",
            "صف الصورة بالتفصيل.",
            "القطة تجلس على الحصيرة.",
            "رجل يركب دراجة في الحديقة.",
            "أي خيار هو الصحيح؟",
            "الإجابة هي A.",
            "أنت مساعد مفيد.",
            "فكر خطوة بخطوة من فضلك.",
            "لا أعرف.",
            "السماء زرقاء والعشب أخضر.",
            "سؤال: ما لون الدائرة؟",
        ],
    ),
    "tr": dict(
        colours=["kırmızı", "mavi", "yeşil", "sarı", "siyah", "beyaz", "turuncu", "mor"],
        shapes=["daire", "kare", "üçgen", "yıldız", "dikdörtgen", "çizgi"],
        counts=["bir", "iki", "üç", "dört", "beş"],
        positions=["sol", "sağ", "üst", "alt", "orta"],
        yes="Evet",
        no="Hayır",
        templates=[
            "{position} tarafta {colour} bir {shape} var.",
            "Kaç tane {shape} var? {count}.",
            "{shape} {colour} mi? {yn}.",
            "Resimde {count} tane {colour} şekil görünüyor.",
        ],
        sentences=[
            "Resimde ne var?",
            "Resmi ayrıntılı olarak açıklayın.",
            "Kedi paspasın üzerinde oturuyor.",
            "Bir adam parkta bisiklet sürüyor.",
            "Hangi seçenek doğru?",
            "Cevap A.",
            "Sen yardımcı bir asistansın.",
            "Lütfen adım adım düşünün.",
            "Bilmiyorum.",
            "Gökyüzü mavi ve çimen yeşil.",
            "Soru: dairenin rengi nedir?",
        ],
    ),
    "ru": dict(
        colours=["красный", "синий", "зелёный", "жёлтый", "чёрный", "белый", "оранжевый", "фиолетовый"],
        shapes=["круг", "квадрат", "треугольник", "звезда", "прямоугольник", "линия"],
        counts=["один", "два", "три", "четыре", "пять"],
        positions=["слева", "справа", "сверху", "снизу", "в центре"],
        yes="Да",
        no="Нет",
        templates=[
            "{position} находится {colour} {shape}.",
            "Сколько здесь фигур {shape}? {count}.",
            "{shape} {colour}? {yn}.",
            "На изображении {count} фигуры цвета {colour}.",
        ],
        sentences=[
            "Что изображено на картинке?",
            "Опишите изображение подробно.",
            "Кошка сидит на коврике.",
            "Мужчина едет на велосипеде в парке.",
            "Какой вариант правильный?",
            "Ответ A.",
            "Вы полезный помощник.",
            "Пожалуйста, думайте шаг за шагом.",
            "Я не знаю.",
            "Небо синее, а трава зелёная.",
            "Вопрос: какого цвета круг?",
        ],
    ),
}


def build_corpus() -> list[str]:
    """Deterministic list of training lines (same order every run)."""
    lines: list[str] = list(MMMB_INSTRUCTIONS)
    for lang, lex in LEXICON.items():
        lines.extend(lex["sentences"])
        lines.append(" ".join(lex["colours"] + lex["shapes"] + lex["counts"] + lex["positions"]))
        i = 0
        for colour in lex["colours"]:
            for shape in lex["shapes"]:
                position = lex["positions"][i % len(lex["positions"])]
                count = lex["counts"][i % len(lex["counts"])]
                yn = lex["yes"] if i % 2 == 0 else lex["no"]
                for template in lex["templates"]:
                    lines.append(template.format(colour=colour, shape=shape, position=position, count=count, yn=yn))
                i += 1
        # multiple-choice style prompts, as in the MMMB/MMBench prompt builder
        for k in range(len(lex["shapes"])):
            options = "".join(
                f"\n{letter}. {lex['colours'][(k + j) % len(lex['colours'])]}" for j, letter in enumerate("ABCD")
            )
            lines.append(f"{lex['sentences'][-1]}{options}\n{MMMB_INSTRUCTIONS[list(LEXICON).index(lang)]}")
    lines.extend(str(n) for n in range(100))
    lines.append("A B C D E F G H I J K L M N O P Q R S T U V W X Y Z . , : ; ! ? ( ) [ ] { } # * - + = / \\ ' \"")
    return lines


def build_tokenizer(with_image_token: bool = True):
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, normalizers, pre_tokenizers, processors
    from tokenizers.models import BPE
    from tokenizers.trainers import BpeTrainer

    tokenizer = Tokenizer(
        BPE(unk_token=None, continuing_subword_prefix="", end_of_word_suffix="", fuse_unk=False, byte_fallback=False)
    )
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = BpeTrainer(
        vocab_size=VOCAB_SIZE,
        min_frequency=1,
        show_progress=False,
        special_tokens=[],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tokenizer.train_from_iterator(build_corpus(), trainer=trainer)
    specials = SPECIAL_TOKENS + ([IMAGE_TOKEN] if with_image_token else [])
    tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
    return tokenizer


def write_tokenizer(output: Path, with_image_token: bool = True) -> Path:
    # the chat template lives in the processor module (remote code); the tokenizer ships the same one so that
    # saving a processor (which writes chat_template.jinja next to the tokenizer files) never changes behaviour.
    from transformers_parrot.models.parrot.processing_parrot import DEFAULT_CHAT_TEMPLATE

    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(with_image_token)
    tokenizer.save(str(output / "tokenizer.json"), pretty=True)
    specials = SPECIAL_TOKENS + ([IMAGE_TOKEN] if with_image_token else [])
    additional = specials[1:]  # <|im_start|>, <|im_end|>, (<image>)
    added_tokens_decoder = {
        str(tokenizer.token_to_id(t)): {
            "content": t,
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "single_word": False,
            "special": True,
        }
        for t in specials
    }
    config = {
        # Qwen2Tokenizer: Qwen2TokenizerFast on 4.57, the tokenizers-backed Qwen2Tokenizer on 5.x
        "tokenizer_class": "Qwen2Tokenizer",
        "add_prefix_space": False,
        "added_tokens_decoder": added_tokens_decoder,
        # `additional_special_tokens` (not 5.x's list-valued `extra_special_tokens`, which 4.57 cannot read)
        "additional_special_tokens": additional,
        "bos_token": None,
        "eos_token": IM_END,
        "pad_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>",
        "clean_up_tokenization_spaces": False,
        "errors": "replace",
        "model_max_length": 32768,
        "split_special_tokens": False,
    }
    (output / "tokenizer_config.json").write_text(
        json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
    )
    special_map = {
        "additional_special_tokens": additional,
        "eos_token": IM_END,
        "pad_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>",
    }
    (output / "special_tokens_map.json").write_text(json.dumps(special_map, indent=2) + "\n", encoding="utf-8")
    (output / "chat_template.jinja").write_text(DEFAULT_CHAT_TEMPLATE, encoding="utf-8")
    return output


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    parser.add_argument(
        "--no-image-token", action="store_true", help="original-style tokenizer without the <image> special token"
    )
    args = parser.parse_args(argv)
    out = write_tokenizer(args.output, with_image_token=not args.no_image_token)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
