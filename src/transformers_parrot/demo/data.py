"""Synthetic multilingual visual question answering for the demo: PIL drawings of shapes, and questions about
their colour, shape, count and position in en, zh, pt, ar, tr, ru, with answers in the question's language, and
short descriptions (English ones for stage-1 alignment, every language's in stage 2).

Everything is a pure function of a seed (`random.Random`, no global state), so the same seed gives the same
images, questions and files byte for byte.

Training data is written as the release's LLaVA JSON (``{"id", "image", "conversations"}``) with PNG images in a
folder, the format `transformers_parrot.training` reads; held-out test questions are written as MMMB-format
multiple-choice TSVs, one per language (columns ``index, question, A, B, C, D, answer, category, image``),
the format `parrot-eval` reads.
"""

from __future__ import annotations

import base64
import csv
import io
import json
import math
import random
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw

from ..evaluation.prompts import build_prompt
from ..languages import FILE_CODES, LANGUAGES, QUESTIONS

KINDS = ("colour", "shape", "count", "position")
LETTERS = "ABCD"

COLOURS = {  # name -> RGB; clean, well separated hues on a white background
    "red": (220, 30, 30),
    "blue": (30, 70, 230),
    "green": (30, 160, 50),
    "yellow": (240, 200, 0),
    "orange": (250, 130, 0),
    "purple": (140, 40, 190),
}
SHAPES = ("circle", "square", "triangle", "star")
COUNTS = (1, 2, 3, 4)
POSITIONS = ("left", "right", "top", "bottom")
IMAGE_SIZE = 48  # px

# Answer words per language (mostly the words the bundled tiny tokenizer was trained on).
WORDS: dict[str, dict[str, str]] = {
    "en": {
        "red": "red",
        "blue": "blue",
        "green": "green",
        "yellow": "yellow",
        "orange": "orange",
        "purple": "purple",
        "circle": "circle",
        "square": "square",
        "triangle": "triangle",
        "star": "star",
        1: "one",
        2: "two",
        3: "three",
        4: "four",
        "left": "left",
        "right": "right",
        "top": "top",
        "bottom": "bottom",
    },
    "zh": {
        "red": "红色",
        "blue": "蓝色",
        "green": "绿色",
        "yellow": "黄色",
        "orange": "橙色",
        "purple": "紫色",
        "circle": "圆形",
        "square": "正方形",
        "triangle": "三角形",
        "star": "星形",
        1: "一个",
        2: "两个",
        3: "三个",
        4: "四个",
        "left": "左边",
        "right": "右边",
        "top": "上面",
        "bottom": "下面",
    },
    "pt": {
        "red": "vermelho",
        "blue": "azul",
        "green": "verde",
        "yellow": "amarelo",
        "orange": "laranja",
        "purple": "roxo",
        "circle": "círculo",
        "square": "quadrado",
        "triangle": "triângulo",
        "star": "estrela",
        1: "um",
        2: "dois",
        3: "três",
        4: "quatro",
        "left": "esquerda",
        "right": "direita",
        "top": "cima",
        "bottom": "baixo",
    },
    "ar": {
        "red": "أحمر",
        "blue": "أزرق",
        "green": "أخضر",
        "yellow": "أصفر",
        "orange": "برتقالي",
        "purple": "بنفسجي",
        "circle": "دائرة",
        "square": "مربع",
        "triangle": "مثلث",
        "star": "نجمة",
        1: "واحد",
        2: "اثنان",
        3: "ثلاثة",
        4: "أربعة",
        "left": "اليسار",
        "right": "اليمين",
        "top": "الأعلى",
        "bottom": "الأسفل",
    },
    "tr": {
        "red": "kırmızı",
        "blue": "mavi",
        "green": "yeşil",
        "yellow": "sarı",
        "orange": "turuncu",
        "purple": "mor",
        "circle": "daire",
        "square": "kare",
        "triangle": "üçgen",
        "star": "yıldız",
        1: "bir",
        2: "iki",
        3: "üç",
        4: "dört",
        "left": "sol",
        "right": "sağ",
        "top": "üst",
        "bottom": "alt",
    },
    "ru": {
        "red": "красный",
        "blue": "синий",
        "green": "зелёный",
        "yellow": "жёлтый",
        "orange": "оранжевый",
        "purple": "фиолетовый",
        "circle": "круг",
        "square": "квадрат",
        "triangle": "треугольник",
        "star": "звезда",
        1: "один",
        2: "два",
        3: "три",
        4: "четыре",
        "left": "слева",
        "right": "справа",
        "top": "сверху",
        "bottom": "снизу",
    },
}

# Short descriptions: stage 1 aligns on English ones (as the paper's captions), stage 2 has them in every language
# (as its multilingual descriptions): each names every attribute of the picture, so one sample teaches them all.
CAPTION_PROMPTS = {
    "en": "Describe the image briefly.",
    "zh": "简要描述这张图片。",
    "pt": "Descreva a imagem brevemente.",
    "ar": "صف الصورة باختصار.",
    "tr": "Resmi kısaca açıklayın.",
    "ru": "Кратко опишите изображение.",
}


@dataclass(frozen=True)
class Scene:
    """What a drawing shows: `count` copies of one `shape` in one `colour`; `position` is set when count == 1."""

    shape: str
    colour: str
    count: int
    position: str | None
    seed: int

    def value(self, kind: str):
        return {"colour": self.colour, "shape": self.shape, "count": self.count, "position": self.position}[kind]


def candidates(kind: str) -> tuple:
    return {"colour": tuple(COLOURS), "shape": SHAPES, "count": COUNTS, "position": POSITIONS}[kind]


def random_scene(rng: random.Random, kind: str | None = None) -> Scene:
    """A scene that can answer `kind` (a position question needs a single shape)."""
    count = 1 if kind == "position" else rng.choice(COUNTS)
    position = rng.choice(POSITIONS) if count == 1 else None
    return Scene(rng.choice(SHAPES), rng.choice(tuple(COLOURS)), count, position, rng.randrange(1 << 30))


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, r: float, fill) -> None:
    if shape == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
    elif shape == "square":
        s = r * 0.88
        draw.rectangle((cx - s, cy - s, cx + s, cy + s), fill=fill)
    elif shape == "triangle":
        draw.polygon([(cx, cy - r), (cx + r, cy + r * 0.85), (cx - r, cy + r * 0.85)], fill=fill)
    elif shape == "star":
        points = []
        for i in range(10):
            radius = r if i % 2 == 0 else r * 0.45
            angle = -math.pi / 2 + i * math.pi / 5
            points.append((cx + radius * math.cos(angle), cy + radius * math.sin(angle)))
        draw.polygon(points, fill=fill)
    else:
        raise ValueError(f"unknown shape {shape!r}")


def render(scene: Scene, size: int = IMAGE_SIZE) -> Image.Image:
    """Draw a scene on a white `size`×`size` canvas (deterministic for the scene's seed).

    Several shapes go into distinct cells of a 2×2 grid with a little jitter; a single shape sits centred on the
    left, right, top or bottom edge of the canvas."""
    rng = random.Random(scene.seed)
    image = Image.new("RGB", (size, size), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    fill = COLOURS[scene.colour]
    if scene.count == 1:
        # large enough to span several patches of the small from-scratch vision tower
        r = size * 0.28
        along = size / 2 + rng.uniform(-0.05, 0.05) * size
        edge = size * 0.27
        cx, cy = {
            "left": (edge, along),
            "right": (size - edge, along),
            "top": (along, edge),
            "bottom": (along, size - edge),
        }[scene.position]
        _draw_shape(draw, scene.shape, cx, cy, r, fill)
        return image
    half = size / 2
    for cell in rng.sample(range(4), scene.count):
        cx = (cell % 2) * half + half / 2
        cy = (cell // 2) * half + half / 2
        _draw_shape(draw, scene.shape, cx, cy, size * 0.22, fill)
    return image


def word(language: str, value) -> str:
    return WORDS[language][value]


def mc_item(rng: random.Random, scene: Scene, kind: str, language: str) -> tuple[str, dict[str, str], str]:
    """(question, {letter: option text}, answer letter): the right answer and three distractors of the same
    kind, shuffled."""
    right = scene.value(kind)
    others = [v for v in candidates(kind) if v != right]
    options = [right] + rng.sample(others, 3)
    rng.shuffle(options)
    letters = {LETTERS[i]: word(language, v) for i, v in enumerate(options)}
    return QUESTIONS[language][kind], letters, LETTERS[options.index(right)]


def caption(scene: Scene, language: str = "en") -> str:
    """English: "Two red stars." / "One blue circle on the left."; other languages: the attribute words in the
    language, comma-separated ("两个, 红色, 星形")."""
    if language != "en":
        values = (scene.count, scene.colour, scene.shape) + ((scene.position,) if scene.position else ())
        return ", ".join(word(language, v) for v in values)
    text = f"{WORDS['en'][scene.count]} {scene.colour} {scene.shape}{'s' if scene.count > 1 else ''}"
    if scene.position:
        text += f" on the {scene.position}"
    return text[0].upper() + text[1:] + "."


# ---------------------------------------------------------------------------------------------- writers
def _png(image: Image.Image, path: Path) -> None:
    image.save(path, format="PNG", optimize=False, compress_level=1)


def instruction(
    rng: random.Random, scene: Scene, kind: str, language: str, caption_ratio: float, mc_ratio: float
) -> tuple[str, str, str, str]:
    """(prompt, answer, style, kind asked) about `scene` in `language`: a description with probability
    `caption_ratio`, else a question about `kind`: Parrot's multiple-choice prompt with probability `mc_ratio`
    (exactly the evaluation prompt, options shuffled, answered with the right option's text: parrot-eval scores an
    answer that names exactly one option's text as that option, VLMEvalKit's rule), else a short free-form one."""
    if rng.random() < caption_ratio:
        return CAPTION_PROMPTS[language], caption(scene, language), "caption", "all"
    if rng.random() < mc_ratio:
        question, options, letter = mc_item(rng, scene, kind, language)
        return build_prompt(question, options, language), options[letter], "mc", kind
    return QUESTIONS[language][kind], word(language, scene.value(kind)), "free", kind


def _sample(sample_id: str, image: str | None, prompt: str, answer: str, **extra) -> dict:
    human = f"<image>\n{prompt}" if image else prompt
    return {
        "id": sample_id,
        **({"image": image} if image else {}),
        **extra,
        "conversations": [{"from": "human", "value": human}, {"from": "gpt", "value": answer}],
    }


def write_training_data(
    folder: str | Path,
    seed: int,
    num_images: int,
    stage1_samples: int,
    languages=LANGUAGES,
    mc_ratio: float = 0.75,
    caption_ratio: float = 0.3,
    questions_per_image: int = 2,
    stage1_questions: bool = False,
    stage1_text_ratio: float = 0.0,
    stage1_text_in_english: bool = False,
    image_size: int = IMAGE_SIZE,
    on_image=None,
) -> dict:
    """Write `num_images` PNGs and two LLaVA JSON files:

    - ``stage1.json``, the English-centric alignment: an English description of each of the first `stage1_samples`
      images and, with `stage1_questions`, an English question about it; plus `stage1_text_ratio × stage1_samples`
      text-only samples (MLAN's language-only data): a scene written in words in one of `languages` (in English
      with `stage1_text_in_english`: the cross-lingual link a pretrained multilingual LLM brings), then a
      description request or question in that language, answered in it (with both, the LLM learns every language
      from text and the pictures in English only: the default `parrot-demo` recipe);
    - ``stage2.json``: `questions_per_image` samples per image in random languages of `languages` (`instruction`:
      descriptions, multiple-choice and free-form questions about the image's kind; image i is drawn for kind
      ``KINDS[i % 4]``, so the four kinds are equally frequent, as in the held-out sets).

    `on_image()` is called after each image (progress). Returns a summary (counts per language and kind)."""
    folder = Path(folder)
    images = folder / "images"
    images.mkdir(parents=True, exist_ok=True)
    rng = random.Random(f"parrot-demo-train-{seed}")
    stage1, stage2 = [], []
    counts: dict[str, int] = {}
    for i in range(num_images):
        kind = KINDS[i % len(KINDS)]
        scene = random_scene(rng, kind)
        name = f"{i:06d}.png"
        _png(render(scene, image_size), images / name)
        if i < stage1_samples:
            stage1.append(_sample(f"cap{i}", name, CAPTION_PROMPTS["en"], caption(scene)))
            if stage1_questions:
                prompt, answer, _, _ = instruction(rng, scene, kind, "en", 0.0, mc_ratio)
                stage1.append(_sample(f"en{i}", name, prompt, answer))
        for j in range(questions_per_image):
            language = rng.choice(tuple(languages))
            prompt, answer, style, asked = instruction(rng, scene, kind, language, caption_ratio, mc_ratio)
            stage2.append(_sample(f"q{i}-{j}", name, prompt, answer, language=language, kind=asked, style=style))
            key = f"{language}/{asked}/{style}"
            counts[key] = counts.get(key, 0) + 1
        if on_image is not None:
            on_image()
    text_rng = random.Random(f"parrot-demo-text-{seed}")
    for i in range(round(stage1_text_ratio * stage1_samples)):
        kind, language = KINDS[i % len(KINDS)], text_rng.choice(tuple(languages))
        scene = random_scene(text_rng, kind)
        prompt, answer, _, _ = instruction(text_rng, scene, kind, language, caption_ratio, mc_ratio)
        scene_text = caption(scene, "en" if stage1_text_in_english else language)
        stage1.append(_sample(f"text{i}", None, f"{scene_text}\n{prompt}", answer))
    if len(stage1) > min(stage1_samples, num_images):
        text_rng.shuffle(stage1)  # (the descriptions alone stay in order: the default data are unchanged)
    rng.shuffle(stage2)
    (folder / "stage1.json").write_text(json.dumps(stage1, ensure_ascii=False), encoding="utf-8")
    (folder / "stage2.json").write_text(json.dumps(stage2, ensure_ascii=False), encoding="utf-8")
    return {
        "images": num_images,
        "stage1_samples": len(stage1),
        "stage2_samples": len(stage2),
        "stage1_text_only": sum(1 for row in stage1 if "image" not in row),
        "stage2_by_language_kind_style": dict(sorted(counts.items())),
    }


def _b64(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def heldout_rows(seed: int, language: str, per_kind: int, image_size: int = IMAGE_SIZE) -> list[dict]:
    """Held-out multiple-choice rows for one language (`per_kind` questions of each kind), from a random stream
    separate from the training data's (and different per language)."""
    rng = random.Random(f"parrot-demo-test-{seed}-{language}")
    rows = []
    for n in range(per_kind * len(KINDS)):
        kind = KINDS[n % len(KINDS)]
        scene = random_scene(rng, kind)
        question, options, letter = mc_item(rng, scene, kind, language)
        rows.append(
            {
                "index": n,
                "question": question,
                **options,
                "answer": letter,
                "category": kind,
                "image": _b64(render(scene, image_size)),
            }
        )
    return rows


def write_test_tsvs(
    folder: str | Path,
    seed: int,
    per_kind: int,
    languages=LANGUAGES,
    image_size: int = IMAGE_SIZE,
    stem: str = "parrot_demo",
) -> list[Path]:
    """One MMMB-format TSV per language: ``{stem}_{code}.tsv`` (file code "cn" for Chinese, as MMMB's files)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for language in languages:
        path = folder / f"{stem}_{FILE_CODES[language]}.tsv"
        rows = heldout_rows(seed, language, per_kind, image_size)
        with open(path, "w", encoding="utf-8", newline="") as handle:
            writer = csv.DictWriter(
                handle,
                fieldnames=["index", "question", *LETTERS, "answer", "category", "image"],
                delimiter="\t",
                quoting=csv.QUOTE_MINIMAL,
                lineterminator="\n",
            )
            writer.writeheader()
            writer.writerows(rows)
        paths.append(path)
    return paths
