"""Synonyms of Body Part Examined free text (seed 004 §4.2.2.1).

Canonical terms follow DICOM CID 4031 where one exists (e.g. "LEG" is the lower leg, "ARM"
the upper arm). Variants are written already folded: lower case, no accents, words separated
by single spaces (see ``body_part.fold``). Languages: en, es, fr, de, it, pt, ca, and Latin.
"""

from __future__ import annotations

# fmt: off
SYNONYMS: dict[str, tuple[str, ...]] = {
    "HIP": (
        "hip", "hips", "hip joint", "coxofemoral", "coxofemoral joint",
        "cadera", "caderas", "articulacion coxofemoral",  # es
        "hanche", "hanches",  # fr
        "hufte", "huefte", "huften", "huftgelenk", "hueftgelenk",  # de
        "anca", "anche", "articolazione dell anca",  # it
        "quadril", "quadris",  # pt
        "maluc", "malucs",  # ca
        "coxa femoris",  # la
    ),
    "PELVIS": (
        "pelvis", "pelvic", "pelvic girdle", "bony pelvis",
        "pelvis osea",  # es
        "bassin",  # fr
        "becken", "beckenubersicht", "beckenuebersicht",  # de
        "bacino", "pelvi",  # it
        "bacia", "pelve",  # pt
        "baci",  # ca
    ),
    "FEMUR": (
        "femur", "thigh", "femoral shaft",
        "muslo",  # es
        "cuisse",  # fr
        "oberschenkel", "oberschenkelknochen",  # de
        "femore", "coscia",  # it
        "coxa",  # pt
        "cuixa",  # ca
    ),
    "WRIST": (
        "wrist", "wrists", "carpus", "carpal", "radiocarpal",
        "muneca", "munecas", "carpo",  # es, it, pt
        "poignet", "poignets", "carpe",  # fr
        "handgelenk", "handgelenke", "handwurzel",  # de
        "polso", "polsi",  # it
        "punho", "pulso", "punhos",  # pt
        "canell", "canells",  # ca
    ),
    "HAND": (
        "hand", "hands", "metacarpus", "metacarpal",
        "mano", "manos",  # es
        "main", "mains",  # fr
        "hande", "haende", "mittelhand",  # de
        "mani",  # it
        "mao", "maos",  # pt
        "ma", "mans",  # ca
        "manus",  # la
    ),
    "FINGER": (
        "finger", "fingers", "thumb",
        "dedo", "dedos", "pulgar",  # es, pt
        "doigt", "doigts", "pouce",  # fr
        "daumen",  # de
        "dito", "dita", "pollice",  # it
        "polegar",  # pt
        "dit", "dits", "polze",  # ca
    ),
    "FOREARM": (
        "forearm", "forearms", "radius", "ulna", "radius ulna", "radius and ulna",
        "antebrazo", "cubito", "radio",  # es
        "avant bras", "avantbras",  # fr
        "unterarm",  # de
        "avambraccio",  # it
        "antebraco",  # pt
        "avantbrac",  # ca
        "antebrachium",  # la
    ),
    "ELBOW": (
        "elbow", "elbows",
        "codo", "codos",  # es
        "coude", "coudes",  # fr
        "ellbogen", "ellenbogen", "ellbogengelenk",  # de
        "gomito", "gomiti",  # it
        "cotovelo",  # pt
        "colze",  # ca
    ),
    "ARM": (
        "arm", "upper arm", "humerus",
        "brazo", "humero",  # es, pt
        "bras",  # fr
        "oberarm",  # de
        "braccio", "omero",  # it
        "braco",  # pt
        "brac",  # ca
    ),
    "SHOULDER": (
        "shoulder", "shoulders",
        "hombro", "hombros",  # es
        "epaule", "epaules",  # fr
        "schulter", "schultergelenk",  # de
        "spalla", "spalle",  # it
        "ombro", "ombros",  # pt
        "espatlla",  # ca
    ),
    "CLAVICLE": (
        "clavicle", "collarbone", "clavicula", "clavicule", "schlusselbein",
        "schluesselbein", "clavicola",
    ),
    "KNEE": (
        "knee", "knees", "patella",
        "rodilla", "rodillas", "rotula",  # es
        "genou", "genoux",  # fr
        "knie", "kniegelenk",  # de
        "ginocchio", "ginocchia",  # it
        "joelho", "joelhos",  # pt
        "genoll", "genolls",  # ca
    ),
    "LEG": (
        "leg", "lower leg", "tibia", "fibula", "tibia fibula", "tib fib", "tibia and fibula",
        "pierna", "perone",  # es, it
        "jambe",  # fr
        "unterschenkel",  # de
        "gamba",  # it
        "perna",  # pt
        "cama",  # ca
    ),
    "ANKLE": (
        "ankle", "ankles", "ankle joint",
        "tobillo", "tobillos",  # es
        "cheville", "chevilles",  # fr
        "sprunggelenk", "oberes sprunggelenk", "osg", "knochel", "knoechel",  # de
        "caviglia", "caviglie",  # it
        "tornozelo", "tornozelos",  # pt
        "turmell", "turmells",  # ca
    ),
    "FOOT": (
        "foot", "feet",
        "pie", "pies",  # es
        "pied", "pieds",  # fr
        "fuss", "fusse", "fuesse",  # de
        "piede", "piedi",  # it
        "pe", "pes",  # pt
        "peu", "peus",  # ca
    ),
    "CHEST": (
        "chest", "thorax", "thoracic cage", "lung", "lungs",
        "torax", "pecho",  # es, pt, ca
        "poitrine",  # fr
        "brust", "brustkorb", "lunge",  # de
        "torace",  # it
        "peito",  # pt
        "pit",  # ca
    ),
    "SKULL": ("skull", "cranium", "head", "craneo", "crane", "schadel", "cranio", "crani"),
    "CSPINE": ("cspine", "cervical spine", "columna cervical", "hws", "halswirbelsaule"),
    "TSPINE": ("tspine", "thoracic spine", "dorsal spine", "columna dorsal", "bws"),
    "LSPINE": ("lspine", "lumbar spine", "columna lumbar", "lws", "lendenwirbelsaule"),
    "SPINE": ("spine", "columna", "rachis", "wirbelsaule", "colonna", "coluna"),
    "ABDOMEN": ("abdomen", "abdominal", "abdomen simple", "bauch", "addome", "abdome"),
    "EXTREMITY": (
        "extremity", "extremities", "extremidad", "extremidades", "extremite", "extremitat",
        "extremitats", "extremita", "extremidade",
    ),
}

#: Laterality words dropped before matching (as whole words, or as a suffix/prefix of one).
LATERALITY: frozenset[str] = frozenset(
    {
        "l", "r", "lt", "rt", "left", "right", "bilat", "bilateral", "both", "bil",
        "izq", "izqda", "izquierda", "izquierdo", "der", "dcha", "dcho", "derecha", "derecho",
        "gauche", "droite", "droit", "g", "d",
        "li", "re", "links", "rechts", "beidseits",
        "sx", "dx", "sin", "sinistra", "sinistro", "destra", "destro",
        "esq", "esquerda", "esquerdo", "direita", "direito", "dir",
        "esquerra", "esquerre", "dreta", "dret",
    }
)

#: Words that carry no anatomy (view names, "joint", articles, "x-ray").
NOISE: frozenset[str] = frozenset(
    {
        "ap", "pa", "lat", "lateral", "obl", "oblique", "view", "views", "xr", "rx", "x", "ray",
        "xray", "cr", "dx", "rad", "rontgen", "roentgen", "radiografia", "radiographie",
        "joint", "gelenk", "articulacion", "articulation", "articolazione", "articulacao",
        "articulacio", "region", "regio", "area", "the", "of", "and", "de", "del", "la", "le",
        "du", "des", "da", "do", "di", "dell", "della", "y", "et", "und", "e", "i",
    }
)
# fmt: on
