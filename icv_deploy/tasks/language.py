"""Is an instruction English? InstructCV's text encoder (CLIP) and its instruction tuning are English only.

Two signals, no language-model dependency:
- script: most letters outside the Latin alphabet (Chinese, Japanese, Korean, Cyrillic, Arabic, ...);
- words: common function words and task words of Spanish, German, French, Italian and Portuguese that are
  not English words, outnumbering the English function words (so "Detect El Capitan" or "Segment the
  pain au chocolat" stay English: one foreign-looking word does not make a sentence foreign).
"""

from __future__ import annotations

import re
import unicodedata

# Words that are common in these languages and are not (common) English words. Category names that are
# also English ("chat", "image", "die", "a") are left out on purpose.
_FOREIGN_WORDS = {
    "Spanish": "el los las una unos unas del por favor que y con para hay imagen foto fotografía muestra muestre "
               "encuentra encuentre detecta detecte segmenta segmente profundidad mapa gato perro coche dónde "
               "rojo roja azul verde negro negra amarillo amarilla blanco blanca "
               "donde está esta es en la un si pinta marca localiza ubica cuál qué",
    "German": "der das dem des ein eine einen einem und oder mit im ist bitte bild foto zeige zeig finde "
              "erkenne segmentiere markiere tiefe tiefenkarte katze hund wo auto auf dem den zu von dieses "
              "rot rote roten roter blau blaue grün grüne gelb gelbe schwarz schwarze weiß weiße "
              "diesem wie weit gibt es",
    "French": "le la les une des du et ou avec dans est sur pour vous plaît montre montrez trouve trouvez "
              "détecte détectez segmente segmentez profondeur carte chien voiture où cette ce il y dessine "
              "bleu bleue vert verte noir noire blanc blanche jaune",
    "Italian": "il lo gli della dello delle nella trova trovi rileva segmenta immagine gatto cane dove è "
               "mostra per favore questa questo mappa profondità rosso rossa nero nera bianco bianca giallo",
    "Portuguese": "os um uma do da dos das encontre encontra detecte segmente imagem cachorro onde está "
                  "mostre mapa profundidade por favor",
}
_FOREIGN = {lang: set(words.split()) for lang, words in _FOREIGN_WORDS.items()}
_ENGLISH = set(
    "the a an of in on at is are and or with to for from please me you your this that these those there if "
    "it its where what which how can could would will do does find show segment detect highlight draw box "
    "depth map estimate picture photo image mask locate all every each any some".split())
# Letters that English text does not use; each distinct one counts as one foreign word.
_FOREIGN_MARKS = set("ñ¿¡ßäöüçàèéêëîïôûùœãõ")


def _script(char: str) -> str:
    """'Latin' for Latin letters, else the first word of the Unicode name (CJK, CYRILLIC, ARABIC, HANGUL, ...)."""
    name = unicodedata.name(char, "")
    first = name.split(" ")[0] if name else "UNKNOWN"
    return "Latin" if first == "LATIN" else first.title()


def foreign_language(text: str) -> str | None:
    """The name of the language or script the instruction seems to be written in, or None for English."""
    letters = [c for c in text if c.isalpha()]
    if not letters:
        return None
    scripts: dict[str, int] = {}
    for c in letters:
        scripts[s] = scripts.get(s := _script(c), 0) + 1
    latin = scripts.pop("Latin", 0)
    if scripts and latin * 2 < len(letters):
        if "Hiragana" in scripts or "Katakana" in scripts:
            return "Japanese"
        main = max(scripts, key=scripts.get)
        return {"Cjk": "Chinese", "Hangul": "Korean"}.get(main, main)
    words = re.findall(r"[^\W\d_]+", text.lower())
    english = sum(w in _ENGLISH for w in words)
    marks = len(set(text.lower()) & _FOREIGN_MARKS)
    hits = {lang: sum(w in vocab for w in words) + marks for lang, vocab in _FOREIGN.items()}
    lang = max(hits, key=hits.get)
    if hits[lang] >= 2 and hits[lang] > english:
        return lang
    return None
