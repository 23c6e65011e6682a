"""A synthetic fashion shop: a catalog and a period of shoppers' clicks, searches and purchases.

Why synthetic: the real data reachable here is purchase-only and small, while the system is
built for signals only a live shop has (clicks, search queries, sessions, drifting taste,
seasons, new arrivals). The generator plants each of those with known structure, so tests and
demos can check that a model learns what is there, and the same seed always gives the same
data (byte-identical frames, hence the same ``data_hash``).

What is planted, and what a model can learn from it:

* **Catalog.** Every item has a latent style (casual, formal, sporty, boho, minimal, street)
  that shapes its garment type, brand, material, pattern, colour and fit; its title is composed
  from those attributes ("Nordvik slim navy striped cotton shirt"). Items have a season (from
  the garment, else its material), a latent quality, and a first-seen date: a share exists at
  the start, the rest arrive spread over the period.
* **Shoppers.** Each has style, colour and fit ("size") preferences that drift from one state to
  another at a personal time and pace, an activity rate, a purchase and a search propensity.
* **Sessions.** The garment type a shopper looks for follows outfit completion: after buying a
  blazer they look for trousers or a shirt (the ``OUTFIT_NEXT`` table) with probability
  ``P_FOLLOW``, otherwise a type drawn from their style and the season. In a session they click
  several similar items of that type (sampled by their current preferences, season, novelty and
  quality, without repeating past purchases) and sometimes buy the one they like best. Some
  sessions start with a search query ("navy shirt", "formal trousers").
* **Availability.** Nobody sees an item before its first-seen date; new items get a novelty
  boost, so items that arrive in the test period are real cold-start targets.

Everything is vectorised with numpy: one step per session rank (every shopper's k-th session at
once), so 2000 shoppers x 3000 items takes seconds.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from models.data.dataset import Dataset

GENERATOR_VERSION = "synth-v1"
DAY_MS = 86_400_000

STYLES = ("casual", "formal", "sporty", "boho", "minimal", "street")
GROUPS = ("tops", "bottoms", "outerwear", "dresses", "shoes", "accessories")


class Garment(NamedTuple):
    """One garment type: its group, season, base popularity, base price and possible materials."""

    group: str
    season: str
    weight: float
    price: float
    materials: tuple[str, ...]


GARMENTS: dict[str, Garment] = {
    "t-shirt": Garment("tops", "all-season", 3.0, 18, ("cotton", "jersey", "linen")),
    "shirt": Garment("tops", "all-season", 2.5, 40,
                     ("cotton", "linen", "silk", "denim", "flannel")),
    "blouse": Garment("tops", "all-season", 1.5, 45,
                      ("silk", "cotton", "chiffon", "satin", "linen")),
    "sweater": Garment("tops", "autumn/winter", 2.0, 55, ("wool", "cashmere", "cotton")),
    "hoodie": Garment("tops", "autumn/winter", 1.8, 45, ("cotton", "fleece", "jersey")),
    "tank top": Garment("tops", "summer", 1.2, 15, ("cotton", "jersey", "linen")),
    "polo shirt": Garment("tops", "spring/summer", 1.0, 35, ("cotton", "jersey")),
    "cardigan": Garment("tops", "spring/autumn", 1.0, 50, ("wool", "cashmere", "cotton")),
    "jeans": Garment("bottoms", "all-season", 2.5, 60, ("denim",)),
    "trousers": Garment("bottoms", "all-season", 2.0, 55,
                        ("wool", "cotton", "linen", "polyester", "corduroy")),
    "chinos": Garment("bottoms", "all-season", 1.2, 45, ("cotton",)),
    "shorts": Garment("bottoms", "summer", 1.5, 30, ("cotton", "denim", "linen", "nylon")),
    "skirt": Garment("bottoms", "all-season", 1.5, 40,
                     ("denim", "cotton", "linen", "satin", "leather", "wool")),
    "joggers": Garment("bottoms", "all-season", 1.3, 40, ("fleece", "cotton", "jersey", "nylon")),
    "leggings": Garment("bottoms", "all-season", 1.0, 30, ("jersey", "nylon", "polyester")),
    "coat": Garment("outerwear", "autumn/winter", 1.2, 180, ("wool", "cashmere", "tweed")),
    "trench coat": Garment("outerwear", "spring/autumn", 0.7, 160, ("cotton", "polyester")),
    "jacket": Garment("outerwear", "all-season", 1.2, 110,
                      ("denim", "leather", "nylon", "suede", "corduroy")),
    "blazer": Garment("outerwear", "all-season", 1.0, 120,
                      ("wool", "linen", "tweed", "velvet", "cotton")),
    "puffer jacket": Garment("outerwear", "winter", 0.9, 130, ("nylon", "polyester")),
    "dress": Garment("dresses", "all-season", 2.2, 65,
                     ("cotton", "silk", "jersey", "satin", "velvet", "linen")),
    "maxi dress": Garment("dresses", "spring/summer", 1.0, 70, ("cotton", "linen", "chiffon")),
    "jumpsuit": Garment("dresses", "spring/summer", 0.7, 70, ("cotton", "linen", "jersey")),
    "sneakers": Garment("shoes", "all-season", 2.2, 80, ("canvas", "leather", "suede")),
    "boots": Garment("shoes", "autumn/winter", 1.3, 130, ("leather", "suede")),
    "heels": Garment("shoes", "all-season", 1.0, 90, ("leather", "suede", "satin")),
    "loafers": Garment("shoes", "all-season", 0.9, 95, ("leather", "suede")),
    "sandals": Garment("shoes", "summer", 1.0, 45, ("leather", "straw", "canvas")),
    "running shoes": Garment("shoes", "all-season", 1.0, 100, ("mesh", "nylon")),
    "scarf": Garment("accessories", "autumn/winter", 1.0, 30, ("wool", "cashmere", "silk")),
    "bag": Garment("accessories", "all-season", 1.4, 70, ("leather", "canvas", "suede", "nylon")),
    "belt": Garment("accessories", "all-season", 0.8, 30, ("leather", "suede")),
    "cap": Garment("accessories", "spring/summer", 0.8, 22, ("cotton", "nylon", "canvas")),
    "beanie": Garment("accessories", "winter", 0.8, 20, ("wool", "cashmere", "fleece")),
    "gloves": Garment("accessories", "winter", 0.6, 30, ("leather", "wool")),
    "sun hat": Garment("accessories", "summer", 0.6, 30, ("straw", "cotton")),
}

# Outfit completion: what a shopper looks for after buying each garment type (relative weights).
OUTFIT_NEXT: dict[str, dict[str, float]] = {
    "t-shirt": {"jeans": 3, "shorts": 2, "sneakers": 2, "chinos": 1},
    "shirt": {"trousers": 3, "chinos": 2, "blazer": 2, "loafers": 1},
    "blouse": {"skirt": 3, "trousers": 2, "heels": 1, "bag": 1},
    "sweater": {"jeans": 2, "trousers": 2, "scarf": 2, "boots": 1},
    "hoodie": {"joggers": 3, "sneakers": 2, "cap": 2, "jeans": 1},
    "tank top": {"shorts": 3, "sandals": 2, "skirt": 1, "sun hat": 1},
    "polo shirt": {"chinos": 3, "shorts": 2, "loafers": 1},
    "cardigan": {"t-shirt": 2, "skirt": 2, "jeans": 1, "scarf": 1},
    "jeans": {"t-shirt": 3, "sneakers": 3, "belt": 1, "jacket": 1},
    "trousers": {"shirt": 3, "loafers": 2, "blazer": 2, "belt": 1},
    "chinos": {"polo shirt": 2, "shirt": 2, "loafers": 2, "belt": 1},
    "shorts": {"sandals": 3, "t-shirt": 2, "tank top": 2, "cap": 1},
    "skirt": {"blouse": 3, "heels": 2, "tank top": 1, "bag": 1},
    "joggers": {"hoodie": 3, "running shoes": 2, "sneakers": 2, "cap": 1},
    "leggings": {"running shoes": 3, "tank top": 2, "hoodie": 1},
    "coat": {"scarf": 3, "boots": 3, "gloves": 2, "beanie": 1},
    "trench coat": {"scarf": 2, "boots": 2, "bag": 2, "trousers": 1},
    "jacket": {"jeans": 3, "t-shirt": 2, "boots": 2, "sneakers": 1},
    "blazer": {"trousers": 3, "shirt": 3, "loafers": 2},
    "puffer jacket": {"beanie": 3, "gloves": 2, "boots": 2, "joggers": 1},
    "dress": {"heels": 3, "bag": 3, "sandals": 1, "jacket": 1},
    "maxi dress": {"sandals": 3, "sun hat": 2, "bag": 2},
    "jumpsuit": {"heels": 2, "sandals": 2, "bag": 2, "belt": 1},
    "sneakers": {"joggers": 2, "jeans": 2, "hoodie": 1, "cap": 1},
    "boots": {"jeans": 2, "coat": 2, "scarf": 1, "skirt": 1},
    "heels": {"dress": 3, "bag": 2, "skirt": 1},
    "loafers": {"trousers": 2, "chinos": 2, "shirt": 1, "belt": 1},
    "sandals": {"maxi dress": 2, "shorts": 2, "sun hat": 1, "tank top": 1},
    "running shoes": {"leggings": 3, "joggers": 2, "cap": 1},
    "scarf": {"coat": 2, "gloves": 2, "beanie": 2, "sweater": 1},
    "bag": {"dress": 2, "heels": 1, "belt": 1, "blouse": 1},
    "belt": {"jeans": 2, "trousers": 2, "chinos": 1},
    "cap": {"hoodie": 2, "t-shirt": 2, "sneakers": 1},
    "beanie": {"puffer jacket": 2, "scarf": 2, "gloves": 2, "hoodie": 1},
    "gloves": {"scarf": 3, "beanie": 2, "coat": 1},
    "sun hat": {"maxi dress": 2, "sandals": 2, "tank top": 1},
}

# Months in which a season label is "in season" (northern hemisphere shop).
SEASON_MONTHS: dict[str, tuple[int, ...]] = {
    "all-season": tuple(range(1, 13)),
    "spring/summer": (3, 4, 5, 6, 7, 8),
    "autumn/winter": (9, 10, 11, 12, 1, 2),
    "summer": (5, 6, 7, 8),
    "winter": (11, 12, 1, 2),
    "spring/autumn": (3, 4, 5, 9, 10, 11),
}
SEASONS = tuple(SEASON_MONTHS)
# An all-season garment takes its season from the material (a linen shirt is for summer).
MATERIAL_SEASON = {"linen": "spring/summer", "chiffon": "spring/summer", "straw": "summer",
                   "wool": "autumn/winter", "cashmere": "autumn/winter", "tweed": "autumn/winter",
                   "fleece": "autumn/winter", "corduroy": "autumn/winter",
                   "flannel": "autumn/winter", "velvet": "autumn/winter"}

MATERIALS = ("cotton", "jersey", "linen", "silk", "denim", "flannel", "chiffon", "satin", "wool",
             "cashmere", "fleece", "polyester", "corduroy", "nylon", "leather", "tweed", "suede",
             "velvet", "canvas", "straw", "mesh")
MATERIAL_PRICE = {"cashmere": 2.5, "silk": 1.8, "leather": 1.7, "suede": 1.6, "wool": 1.4,
                  "tweed": 1.4, "velvet": 1.3, "linen": 1.2, "satin": 1.2, "denim": 1.1,
                  "polyester": 0.8, "jersey": 0.9, "canvas": 0.9, "straw": 0.8}

COLOURS = ("black", "white", "navy", "grey", "charcoal", "beige", "cream", "camel", "brown",
           "olive", "khaki", "burgundy", "red", "pink", "lilac", "sky blue", "cobalt", "emerald",
           "mustard", "terracotta")
PATTERNS = ("plain", "striped", "checked", "floral", "polka-dot", "graphic", "camo", "paisley",
            "houndstooth", "pinstripe", "tie-dye", "colour-block", "leopard-print")
# Patterns that make sense per group (nobody sells pinstripe sneakers).
GROUP_PATTERNS = {
    "shoes": ("plain", "colour-block", "camo", "leopard-print"),
    "accessories": ("plain", "checked", "striped", "floral", "paisley", "polka-dot",
                    "houndstooth", "leopard-print"),
}
# Fits ("size" preference) per group; shoes and accessories have none.
GROUP_FITS = {
    "tops": ("slim", "regular", "relaxed", "oversized", "cropped"),
    "bottoms": ("slim", "regular", "relaxed", "wide-leg", "tapered"),
    "outerwear": ("slim", "regular", "relaxed", "oversized", "tailored"),
    "dresses": ("fitted", "regular", "relaxed", "a-line"),
}
FITS = ("slim", "regular", "relaxed", "oversized", "cropped", "wide-leg", "tapered", "tailored",
        "fitted", "a-line")

# How each latent style shapes an item: favoured garment types, materials, colours, fits and
# pattern weights. Favoured entries get a higher weight than the rest (see _style_weights).
STYLE_GARMENTS = {
    "casual": ("t-shirt", "jeans", "sneakers", "hoodie", "shorts", "chinos", "sweater", "cap",
               "shirt"),
    "formal": ("shirt", "blazer", "trousers", "loafers", "heels", "dress", "coat", "belt",
               "blouse"),
    "sporty": ("hoodie", "joggers", "leggings", "running shoes", "sneakers", "tank top", "cap",
               "puffer jacket", "shorts"),
    "boho": ("maxi dress", "blouse", "skirt", "sandals", "sun hat", "scarf", "cardigan",
             "jumpsuit", "bag"),
    "minimal": ("t-shirt", "trousers", "coat", "sweater", "loafers", "shirt", "bag",
                "trench coat", "dress"),
    "street": ("hoodie", "jeans", "sneakers", "cap", "puffer jacket", "joggers", "jacket",
               "beanie", "t-shirt"),
}
STYLE_MATERIALS = {
    "casual": ("cotton", "denim", "jersey", "canvas", "flannel"),
    "formal": ("wool", "silk", "leather", "satin", "tweed", "cashmere"),
    "sporty": ("nylon", "polyester", "mesh", "fleece", "jersey"),
    "boho": ("linen", "suede", "chiffon", "straw", "cotton", "velvet"),
    "minimal": ("cashmere", "cotton", "wool", "leather", "linen"),
    "street": ("denim", "nylon", "fleece", "canvas", "leather", "corduroy"),
}
STYLE_COLOURS = {
    "casual": ("navy", "white", "grey", "beige", "sky blue", "olive", "khaki"),
    "formal": ("black", "navy", "charcoal", "white", "grey", "burgundy", "camel"),
    "sporty": ("black", "white", "red", "cobalt", "grey", "emerald"),
    "boho": ("terracotta", "mustard", "cream", "olive", "brown", "beige", "burgundy"),
    "minimal": ("black", "white", "grey", "beige", "cream", "camel", "charcoal"),
    "street": ("black", "white", "red", "khaki", "olive", "lilac", "cobalt"),
}
STYLE_FITS = {
    "casual": ("regular", "relaxed"),
    "formal": ("slim", "tailored", "fitted", "tapered"),
    "sporty": ("regular", "relaxed", "tapered"),
    "boho": ("relaxed", "wide-leg", "a-line"),
    "minimal": ("regular", "slim", "tailored"),
    "street": ("oversized", "relaxed", "wide-leg", "cropped"),
}
STYLE_PATTERNS: dict[str, dict[str, float]] = {
    "casual": {"plain": 6, "striped": 2, "checked": 2, "graphic": 1},
    "formal": {"plain": 8, "pinstripe": 2, "houndstooth": 1, "checked": 1},
    "sporty": {"plain": 6, "colour-block": 3, "graphic": 1},
    "boho": {"plain": 4, "floral": 3, "paisley": 2, "tie-dye": 1, "polka-dot": 1},
    "minimal": {"plain": 12, "striped": 1},
    "street": {"plain": 4, "graphic": 3, "camo": 2, "colour-block": 1, "tie-dye": 1,
               "leopard-print": 1},
}
# Invented brands (not real trademarks): name -> (house style, price tier 1..4).
BRANDS: dict[str, tuple[str, int]] = {
    "Nordvik": ("casual", 2), "Saltmarsh Co": ("casual", 1), "Hollin & Vey": ("casual", 2),
    "Brisby": ("casual", 1),
    "Aldermoor": ("formal", 3), "Pallas Tailoring": ("formal", 4), "Corvell": ("formal", 3),
    "Maison Ardente": ("formal", 4),
    "Kestrel Active": ("sporty", 2), "Velocita Labs": ("sporty", 3), "Trailhaus": ("sporty", 2),
    "Pulsary": ("sporty", 1),
    "Saffron Fields": ("boho", 2), "Wyldmoss": ("boho", 1), "Luma Tierra": ("boho", 3),
    "Ivory Lark": ("boho", 2),
    "Tessellate": ("minimal", 3), "Umber Studio": ("minimal", 2), "Grau & Linn": ("minimal", 4),
    "Quillon": ("minimal", 2),
    "Marrow Street": ("street", 2), "Vantor": ("street", 1), "Noisecraft": ("street", 2),
    "Rovana Youth": ("street", 1),
}
TIER_PRICE = {1: 0.7, 2: 1.0, 3: 1.5, 4: 2.4}

# Search query templates: which attribute of the wanted item a shopper types with its type.
QUERY_TEMPLATES = ("colour", "style", "material", "fit", "pattern", "brand", "type")
QUERY_TEMPLATE_WEIGHTS = (0.32, 0.22, 0.12, 0.1, 0.08, 0.06, 0.1)

# Generator knobs. Recorded in Dataset.extra so a data set says how it was made.
SHARE_AT_START = 0.6          # items in the catalog on day one; the rest arrive over the period
P_FOLLOW = 0.75               # next wanted type follows the outfit table after a purchase
SESSIONS_PER_YEAR = 16.0      # median shopper activity (log-normal around it)
MEAN_EXTRA_CLICKS = 2.5       # clicks per session = 1 + Poisson(this), at most MAX_CLICKS
MAX_CLICKS = 8
BUY_ALPHA, BUY_BETA = 4.0, 6.0        # purchase propensity ~ Beta: mean 0.4 of sessions
SEARCH_ALPHA, SEARCH_BETA = 2.0, 5.0  # search propensity ~ Beta: mean 0.29 of sessions
W_STYLE, W_COLOUR, W_FIT = 1.6, 1.0, 0.8  # exponents on the shopper's current preferences
PREF_FLOOR = 0.02             # keeps every option possible (exploration, noise)
OFF_TYPE = -6.0               # logit penalty for items not of the wanted type
BOUGHT = -4.0                 # logit penalty for items the shopper already bought
IN_SEASON, OFF_SEASON = 0.8, -1.2  # item logit bonus / penalty by the month of the session
NOVELTY, NOVELTY_DAYS = 1.5, 21.0  # boost for new arrivals, decaying with this time scale
QUALITY_SD = 0.6              # latent item quality: a long-tail popularity


@dataclass
class _Catalog:
    """Item attributes as integer codes (indices into the module vocabularies)."""

    style: np.ndarray
    garment: np.ndarray
    brand: np.ndarray
    material: np.ndarray
    pattern: np.ndarray
    colour: np.ndarray
    fit: np.ndarray      # len(FITS) = no fit (shoes, accessories)
    season: np.ndarray
    price: np.ndarray
    first_seen: np.ndarray  # ms since epoch, at midnight UTC
    quality: np.ndarray


@dataclass
class _Shoppers:
    """Latent shopper state: preferences at the start (a) and after drift (b), and habits."""

    style_a: np.ndarray
    style_b: np.ndarray
    colour_a: np.ndarray
    colour_b: np.ndarray
    fit_a: np.ndarray
    fit_b: np.ndarray
    drift_mid: np.ndarray   # ms: when the drift is half done
    drift_len: np.ndarray   # ms: how long the drift takes
    sessions: np.ndarray
    buy: np.ndarray
    search: np.ndarray


def synthesize(users: int = 2000, items: int = 3000, seed: int = 0, start: str = "2025-01-01",
               days: int = 365, progress: bool = False) -> Dataset:
    """Generate a synthetic shop of ``users`` shoppers and ``items`` items over ``days`` days.

    Deterministic for a seed: the same arguments give identical frames and ``data_hash``.
    """
    if users < 1 or items < 1 or days < 1:
        raise ValueError(f"users, items and days must be at least 1 (got {users}, {items}, {days})")
    rng = np.random.default_rng(seed)
    t0 = _start_ms(start)
    catalog = _make_catalog(rng, items, t0, days)
    shoppers = _make_shoppers(rng, users, t0, days)
    events = _simulate(rng, catalog, shoppers, t0, days, progress)
    item_frame = _items_frame(catalog)
    inter = _interactions_frame(events, item_frame, catalog)
    params: dict[str, Any] = {
        "generator": GENERATOR_VERSION, "users": users, "items": items, "seed": seed,
        "start": str(start), "days": days, "share_at_start": SHARE_AT_START,
        "p_follow": P_FOLLOW, "sessions_per_year": SESSIONS_PER_YEAR,
        "mean_clicks_per_session": 1 + MEAN_EXTRA_CLICKS, "max_clicks": MAX_CLICKS,
        "buy_rate": BUY_ALPHA / (BUY_ALPHA + BUY_BETA),
        "search_rate": SEARCH_ALPHA / (SEARCH_ALPHA + SEARCH_BETA),
        "novelty_days": NOVELTY_DAYS, "category": "garment type (see models.data.synth.GARMENTS)",
    }
    return Dataset(item_frame, inter, name="synth", source=f"synthetic (seed={seed})",
                   extra=params)


# -- catalog ---------------------------------------------------------------------------------

def _start_ms(start: str) -> int:
    """The start as ms since epoch (UTC): all times are int64 ms so numpy can vectorise them."""
    ts = pd.Timestamp(start)
    ts = ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")
    return int(ts.value // 1_000_000)


def _favoured(vocab: tuple[str, ...], favoured: dict[str, tuple[str, ...]], hi: float,
              lo: float) -> np.ndarray:
    """A styles x vocab weight matrix: ``hi`` where a style favours the entry, ``lo`` elsewhere."""
    w = np.full((len(STYLES), len(vocab)), lo)
    for s, style in enumerate(STYLES):
        for name in favoured[style]:
            w[s, vocab.index(name)] = hi
    return w


def _sample_rows(rng: np.random.Generator, weights: np.ndarray) -> np.ndarray:
    """One categorical draw per row of a (n, k) weight matrix: vectorised inverse-CDF sampling."""
    cdf = np.cumsum(weights, axis=1)
    cdf /= cdf[:, -1:]
    u = rng.random(len(weights))[:, None]
    return np.minimum((cdf < u).sum(axis=1), weights.shape[1] - 1)


def _make_catalog(rng: np.random.Generator, n: int, t0: int, days: int) -> _Catalog:
    """Draw item attributes: style first, then everything the style shapes."""
    garments = list(GARMENTS)
    style = rng.integers(0, len(STYLES), n)
    base = np.array([g.weight for g in GARMENTS.values()])
    by_style = base * _favoured(tuple(garments), STYLE_GARMENTS, 3.0, 0.4)
    garment = _sample_rows(rng, by_style[style])
    group = np.array([GROUPS.index(GARMENTS[g].group) for g in garments])[garment]

    brand_names = list(BRANDS)
    brand_w = np.array([[4.0 if BRANDS[b][0] == s else 0.2 for b in brand_names] for s in STYLES])
    brand = _sample_rows(rng, brand_w[style])

    allowed = np.array([[m in g.materials for m in MATERIALS] for g in GARMENTS.values()], float)
    style_mat = _favoured(MATERIALS, STYLE_MATERIALS, 4.0, 1.0)
    material = _sample_rows(rng, allowed[garment] * style_mat[style])

    pat_style = np.array([[STYLE_PATTERNS[s].get(p, 0.0) for p in PATTERNS] for s in STYLES])
    pat_group = np.array([[p in GROUP_PATTERNS.get(g, PATTERNS) for p in PATTERNS] for g in GROUPS])
    pattern = _sample_rows(rng, pat_style[style] * pat_group[group] + 1e-9)

    colour = _sample_rows(rng, _favoured(COLOURS, STYLE_COLOURS, 4.0, 0.5)[style])

    fit_group = np.array([[f in GROUP_FITS.get(g, ()) for f in FITS] for g in GROUPS], float)
    fit_w = fit_group[group] * _favoured(FITS, STYLE_FITS, 3.0, 1.0)[style]
    has_fit = fit_w.sum(axis=1) > 0
    fit = np.where(has_fit, _sample_rows(rng, fit_w + (~has_fit)[:, None]), len(FITS))

    own = np.array([SEASONS.index(g.season) for g in GARMENTS.values()])[garment]
    by_material = np.array([SEASONS.index(MATERIAL_SEASON.get(m, "all-season")) for m in MATERIALS])
    season = np.where(own == SEASONS.index("all-season"), by_material[material], own)

    price = (np.array([g.price for g in GARMENTS.values()])[garment]
             * np.array([TIER_PRICE[BRANDS[b][1]] for b in brand_names])[brand]
             * np.array([MATERIAL_PRICE.get(m, 1.0) for m in MATERIALS])[material]
             * rng.lognormal(0.0, 0.15, n))
    price = np.maximum(np.round(price) - 0.01, 4.99)

    return _Catalog(style, garment, brand, material, pattern, colour, fit, season, price,
                    _first_seen(rng, n, t0, days), rng.normal(0.0, QUALITY_SD, n))


def _first_seen(rng: np.random.Generator, n: int, t0: int, days: int) -> np.ndarray:
    """Arrival dates: ``SHARE_AT_START`` of items already exist (up to a year old), the rest
    arrive uniformly over the period, so every part of the period, the test part included,
    has new items."""
    at_start = np.zeros(n, bool)
    at_start[rng.permutation(n)[:max(1, round(SHARE_AT_START * n))]] = True
    day = np.where(at_start, -rng.integers(0, 366, n), rng.integers(0, days, n))
    return t0 - t0 % DAY_MS + day * DAY_MS


# -- shoppers --------------------------------------------------------------------------------

def _make_shoppers(rng: np.random.Generator, n: int, t0: int, days: int) -> _Shoppers:
    """Draw shoppers' tastes before and after their drift, and their habits.

    Colour and fit preferences mix a style-driven part with a personal one, so they correlate
    with style without being fixed by it. Drift happens at a personal time and pace; a third of
    shoppers hardly drift.
    """
    style_a = rng.dirichlet(np.full(len(STYLES), 0.35), n)
    style_new = rng.dirichlet(np.full(len(STYLES), 0.35), n)
    amount = np.where(rng.random(n) < 0.33, 0.0, rng.beta(2.0, 2.0, n))[:, None]
    style_b = (1 - amount) * style_a + amount * style_new

    def mix(styles: np.ndarray, by_style: np.ndarray, personal: np.ndarray) -> np.ndarray:
        by_style = by_style / by_style.sum(axis=1, keepdims=True)
        return 0.5 * styles @ by_style + 0.5 * personal

    colour_w = _favoured(COLOURS, STYLE_COLOURS, 4.0, 0.5)
    colour_personal = rng.dirichlet(np.full(len(COLOURS), 0.3), n)
    colour_a = mix(style_a, colour_w, colour_personal)
    colour_b = mix(style_b, colour_w, (1 - amount) * colour_personal
                   + amount * rng.dirichlet(np.full(len(COLOURS), 0.3), n))
    fit_w = _favoured(FITS, STYLE_FITS, 3.0, 1.0)
    fit_personal = rng.dirichlet(np.full(len(FITS), 0.5), n)
    fit_a = mix(style_a, fit_w, fit_personal)
    fit_b = mix(style_b, fit_w, fit_personal)  # size changes only through style

    span = days * DAY_MS
    drift_mid = t0 + (rng.uniform(0.15, 0.85, n) * span).astype(np.int64)
    drift_len = (rng.uniform(0.05, 0.4, n) * span).astype(np.int64) + 1
    rate = SESSIONS_PER_YEAR * rng.lognormal(0.0, 0.7, n) * days / 365.0
    return _Shoppers(style_a, style_b, colour_a, colour_b, fit_a, fit_b, drift_mid, drift_len,
                     1 + rng.poisson(rate), rng.beta(BUY_ALPHA, BUY_BETA, n),
                     rng.beta(SEARCH_ALPHA, SEARCH_BETA, n))


# -- sessions --------------------------------------------------------------------------------

@dataclass
class _Events:
    """Generated events as parallel arrays; ``template`` is -1 for a click without a query."""

    user: np.ndarray
    item: np.ndarray
    ts: np.ndarray
    purchase: np.ndarray
    template: np.ndarray
    wanted: np.ndarray  # the item a query describes (the session's best candidate)


def _month(ts_ms: np.ndarray) -> np.ndarray:
    """Calendar month (0..11) of ms timestamps, vectorised."""
    return ts_ms.astype("datetime64[ms]").astype("datetime64[M]").astype(np.int64) % 12


def _season_tables() -> tuple[np.ndarray, np.ndarray]:
    """(month x season) logit bonus for items, and (month x garment) weight for wanted types."""
    months = np.arange(1, 13)
    in_season = np.array([[m in SEASON_MONTHS[s] for s in SEASONS] for m in months])
    all_season = np.array([s == "all-season" for s in SEASONS])
    item_bonus = np.where(all_season, 0.0, np.where(in_season, IN_SEASON, OFF_SEASON))
    garment_season = np.array([SEASONS.index(g.season) for g in GARMENTS.values()])
    type_weight = np.where(all_season[garment_season], 1.0,
                           np.where(in_season[:, garment_season], 1.5, 0.25))
    return item_bonus.astype(np.float32), type_weight


def _transition_matrix() -> np.ndarray:
    """OUTFIT_NEXT as a row-stochastic garment x garment matrix."""
    garments = list(GARMENTS)
    m = np.zeros((len(garments), len(garments)))
    for a, nxt in OUTFIT_NEXT.items():
        for b, w in nxt.items():
            m[garments.index(a), garments.index(b)] = w
    return m / m.sum(axis=1, keepdims=True)


BLOCK_CELLS = 1 << 18  # sessions x items per block: bounded memory (1 MB float32), cache-friendly


@dataclass
class _World:
    """Everything a block of sessions needs: the sessions, lookup tables, and what shoppers
    bought so far (``buys``: one row per shopper, item codes in purchase order, -1 = none)."""

    cat: _Catalog
    sh: _Shoppers
    user: np.ndarray
    time: np.ndarray
    day: np.ndarray
    month: np.ndarray
    day_rows: np.ndarray
    type_weight: np.ndarray
    trans: np.ndarray
    style_type: np.ndarray
    off_type: np.ndarray
    prev: np.ndarray
    buys: np.ndarray
    n_buys: np.ndarray


def _simulate(rng: np.random.Generator, cat: _Catalog, sh: _Shoppers, t0: int, days: int,
              progress: bool) -> _Events:
    """Play every shopper's sessions in time order, one session rank at a time.

    A shopper's k-th session depends on what they bought in sessions < k (outfit completion,
    no re-buying), so ranks are processed in order; within a rank all shoppers are independent
    and handled at once as (sessions x items) matrices, in blocks of bounded size.
    """
    n_users, n_items = len(sh.buy), len(cat.style)
    sess_user = np.repeat(np.arange(n_users), sh.sessions)
    sess_time = t0 + (rng.random(len(sess_user)) * days * DAY_MS).astype(np.int64)
    sess_time = sess_time[np.lexsort((sess_time, sess_user))]
    first = np.repeat(np.cumsum(sh.sessions) - sh.sessions, sh.sessions)
    rank = np.arange(len(sess_user)) - first
    by_rank = np.argsort(rank, kind="stable")
    bounds = np.searchsorted(rank[by_rank], np.arange(sh.sessions.max() + 1))
    day0 = t0 - t0 % DAY_MS
    sess_day = (sess_time - day0) // DAY_MS

    base = np.array([g.weight for g in GARMENTS.values()])
    style_type = _favoured(tuple(GARMENTS), STYLE_GARMENTS, 3.0, 0.4)
    world = _World(
        cat=cat, sh=sh, user=sess_user, time=sess_time, day=sess_day,
        month=_month(day0 + sess_day * DAY_MS),
        day_rows=_day_rows(cat, day0, int(sess_day.max()) + 1),
        type_weight=_season_tables()[1], trans=_transition_matrix(),
        style_type=style_type / style_type.sum(axis=1, keepdims=True) * base,
        off_type=np.where(np.arange(len(GARMENTS))[:, None] == cat.garment[None, :], 0.0,
                          OFF_TYPE).astype(np.float32),
        prev=np.full(n_users, -1), buys=np.full((n_users, int(sh.sessions.max())), -1),
        n_buys=np.zeros(n_users, np.int64))
    block = max(1, BLOCK_CELLS // n_items)
    out: list[_Events] = []
    for k in tqdm(range(len(bounds) - 1), desc="synthesize", unit="rank", disable=not progress):
        idx = by_rank[bounds[k]:bounds[k + 1]]
        for start in range(0, len(idx), block):
            out.append(_play(rng, world, idx[start:start + block], k))
    return _Events(**{f.name: np.concatenate([getattr(e, f.name) for e in out])
                      for f in fields(_Events)})


def _play(rng: np.random.Generator, w: _World, idx: np.ndarray, k: int) -> _Events:
    """One block of sessions (distinct shoppers, each at their k-th session)."""
    sh, cat = w.sh, w.cat
    u, t = w.user[idx], w.time[idx]
    drift = np.clip((t - sh.drift_mid[u]) / sh.drift_len[u] + 0.5, 0.0, 1.0)[:, None]
    style = (1 - drift) * sh.style_a[u] + drift * sh.style_b[u]
    colour = (1 - drift) * sh.colour_a[u] + drift * sh.colour_b[u]
    fit = (1 - drift) * sh.fit_a[u] + drift * sh.fit_b[u]

    p_type = style @ w.style_type * w.type_weight[w.month[idx]]
    p_type /= p_type.sum(axis=1, keepdims=True)
    follow = w.trans[np.maximum(w.prev[u], 0)]
    p_type = np.where((w.prev[u] >= 0)[:, None], P_FOLLOW * follow + (1 - P_FOLLOW) * p_type,
                      p_type)
    wanted = _sample_rows(rng, p_type)

    logits = _item_logits(style, colour, fit, cat)
    logits += w.day_rows[w.day[idx]]
    logits += w.off_type[wanted]
    past = w.buys[u, :k]  # at their k-th session shoppers have bought at most k items
    rows = np.broadcast_to(np.arange(len(u))[:, None], past.shape)
    logits[rows[past >= 0], past[past >= 0]] += BOUGHT

    ev = _session_events(rng, u, t, logits, sh)
    buyers, items = ev.user[ev.purchase], ev.item[ev.purchase]
    w.buys[buyers, w.n_buys[buyers]] = items
    w.n_buys[buyers] += 1
    w.prev[buyers] = cat.garment[items]
    return ev


def _day_rows(cat: _Catalog, day0: int, n_days: int) -> np.ndarray:
    """(day x item) logit part that depends only on the day: quality, season, novelty, and
    -inf before the item's first-seen date (nobody sees an item before it exists).

    Computed once per day instead of once per session: it is most of the per-item work.
    """
    day = np.arange(n_days)[:, None]
    first = ((cat.first_seen - day0) // DAY_MS)[None, :]
    item_bonus, _ = _season_tables()
    month = _month(day0 + np.arange(n_days) * DAY_MS)
    rows = item_bonus[month][:, cat.season] + cat.quality[None, :].astype(np.float32)
    age = (day - first + 0.5).astype(np.float32)
    rows += NOVELTY * np.exp(-np.maximum(age, 0) / NOVELTY_DAYS)
    rows[age < 0] = -np.inf
    return rows.astype(np.float32)


def _item_logits(style: np.ndarray, colour: np.ndarray, fit: np.ndarray,
                 cat: _Catalog) -> np.ndarray:
    """(sessions x items) appeal from the shopper's current style, colour and fit preference."""
    log_style = (W_STYLE * np.log(style + PREF_FLOOR)).astype(np.float32)
    log_colour = (W_COLOUR * np.log(colour + PREF_FLOOR)).astype(np.float32)
    log_fit = np.zeros((len(fit), len(FITS) + 1), np.float32)  # last column: item without fit
    log_fit[:, :-1] = W_FIT * np.log(fit + PREF_FLOOR)
    logits = log_style[:, cat.style]
    logits += log_colour[:, cat.colour]
    logits += log_fit[:, cat.fit]
    return logits


def _session_events(rng: np.random.Generator, u: np.ndarray, t: np.ndarray, logits: np.ndarray,
                    sh: _Shoppers) -> _Events:
    """Clicks (and maybe a purchase) for one session per row of ``logits``.

    Clicked items are a sample without replacement proportional to exp(logit) (Gumbel top-k);
    the best of them is the one bought, and the one a search query describes. Clicks happen in
    random order tens of seconds apart; the purchase follows the last click.
    """
    a = len(u)
    k = min(MAX_CLICKS, logits.shape[1])
    # Gumbel top-k: logit - log(E), E ~ Exp(1), is logit + Gumbel noise (one log, not two);
    # in place, because these (sessions x items) passes are most of the generator's time
    noise = rng.standard_exponential(logits.shape, dtype=np.float32)
    np.add(noise, np.float32(1e-30), out=noise)
    np.log(noise, out=noise)
    noisy = np.subtract(logits, noise, out=noise)
    top = np.argpartition(-noisy, k - 1, axis=1)[:, :k]
    top_val = np.take_along_axis(noisy, top, axis=1)
    order = np.argsort(-top_val, axis=1, kind="stable")
    top, top_val = np.take_along_axis(top, order, axis=1), np.take_along_axis(top_val, order, 1)
    n_clicks = np.minimum(1 + rng.poisson(MEAN_EXTRA_CLICKS, a), k)
    valid = (np.arange(k)[None, :] < n_clicks[:, None]) & np.isfinite(top_val)
    best = top[:, 0]
    has_any = valid[:, 0]

    shuffle = np.where(valid, rng.random((a, k)), np.inf).argsort(axis=1, kind="stable")
    clicked = np.take_along_axis(top, shuffle, axis=1)
    valid_t = np.take_along_axis(valid, shuffle, axis=1)
    gaps = rng.exponential(45_000, (a, k)).astype(np.int64) + 1_000
    times = t[:, None] + np.cumsum(gaps, axis=1)
    last = np.where(valid_t, times, 0).max(axis=1)

    search = (rng.random(a) < sh.search[u]) & has_any
    template = np.full((a, k), -1)  # the query sits on the first click (in time) only
    template[:, 0] = np.where(search, rng.choice(len(QUERY_TEMPLATES), a,
                                                 p=QUERY_TEMPLATE_WEIGHTS), -1)
    buy = (rng.random(a) < sh.buy[u]) & has_any
    p_time = last + rng.exponential(60_000, a).astype(np.int64) + 1_000

    n_buy = int(buy.sum())
    return _Events(
        user=np.concatenate([np.repeat(u[:, None], k, axis=1)[valid_t], u[buy]]),
        item=np.concatenate([clicked[valid_t], best[buy]]),
        ts=np.concatenate([times[valid_t], p_time[buy]]),
        purchase=np.concatenate([np.zeros(int(valid_t.sum()), bool), np.ones(n_buy, bool)]),
        template=np.concatenate([template[valid_t], np.full(n_buy, -1)]),
        wanted=np.concatenate([np.repeat(best[:, None], k, axis=1)[valid_t], best[buy]]),
    )


# -- frames ----------------------------------------------------------------------------------

def _items_frame(cat: _Catalog) -> pd.DataFrame:
    """Items in the internal format, titles composed from the attributes."""
    garments, brands = list(GARMENTS), list(BRANDS)
    titles = []
    for b, f, c, p, m, g in zip(cat.brand, cat.fit, cat.colour, cat.pattern, cat.material,
                                cat.garment, strict=True):
        words = [brands[b], FITS[f] if f < len(FITS) else "", COLOURS[c],
                 PATTERNS[p] if p else "", MATERIALS[m], garments[g]]
        titles.append(" ".join(w for w in words if w))
    n = len(cat.style)
    return pd.DataFrame({
        "item_id": [f"i{i:06d}" for i in range(n)],
        "title": titles,
        "category": np.array(garments, dtype=object)[cat.garment],
        "brand": np.array(brands, dtype=object)[cat.brand],
        "colour": np.array(COLOURS, dtype=object)[cat.colour],
        "price": cat.price,
        "first_seen": pd.to_datetime(cat.first_seen, unit="ms", utc=True),
    })


def _query(template: int, item: int, cat: _Catalog) -> str:
    """A search query for an item: one of its attributes plus its garment type."""
    garment = list(GARMENTS)[cat.garment[item]]
    kind = QUERY_TEMPLATES[template]
    if kind == "fit" and cat.fit[item] == len(FITS):
        kind = "colour"
    if kind == "pattern" and cat.pattern[item] == 0:
        kind = "style"
    word = {
        "colour": lambda: COLOURS[cat.colour[item]],
        "style": lambda: STYLES[cat.style[item]],
        "material": lambda: MATERIALS[cat.material[item]],
        "fit": lambda: FITS[cat.fit[item]],
        "pattern": lambda: PATTERNS[cat.pattern[item]],
        "brand": lambda: list(BRANDS)[cat.brand[item]].lower(),
        "type": lambda: "",
    }[kind]()
    return f"{word} {garment}".strip()


def _interactions_frame(ev: _Events, items: pd.DataFrame, cat: _Catalog) -> pd.DataFrame:
    """Interactions in the internal format, time-ordered (ties keep generation order)."""
    queries = np.full(len(ev.user), None, dtype=object)
    has_q = np.flatnonzero(ev.template >= 0)
    queries[has_q] = [_query(int(tp), int(it), cat)
                      for tp, it in zip(ev.template[has_q], ev.wanted[has_q], strict=True)]
    return pd.DataFrame({
        "user_id": np.char.add("u", np.char.zfill(ev.user.astype(str), 5)).astype(object),
        "item_id": items["item_id"].to_numpy()[ev.item],
        "ts": pd.to_datetime(ev.ts, unit="ms", utc=True),
        "kind": np.where(ev.purchase, "purchase", "click").astype(object),
        "query": queries,
    })
