"""A small parts catalogue for search tests, where one query defeats vectors alone."""

from __future__ import annotations

# A parts catalogue. The query names one part number; most entries name part numbers one
# digit away. The hashed-word embedder, like a subword model, sees the near misses as
# nearly the same token (shared character trigrams) and ranks them above the long entry
# that holds the exact number; full text matches only the exact number.
CATALOGUE = {
    "xq7731": "XQ7731: fuser assembly for the M400 and M450 printers, with heat roller,"
    " pressure roller and thermistor; fitted by service engineers only.",
    "xq7732": "Replacement part XQ7732: paper tray roller.",
    "xq7733": "Replacement part XQ7733: toner sensor.",
    "xq7713": "Replacement part XQ7713: drum unit.",
    "xq7371": "Replacement part XQ7371: transfer belt.",
    "xq7730": "Replacement part XQ7730: duplex unit.",
    "xq7735": "Replacement part XQ7735: waste toner box.",
    "kit": "Replacement part kit: rollers and pads for the paper path.",
    "order": "Order a replacement part through the service portal; parts ship in two days.",
    "warranty": "A replacement part fitted by the customer voids the warranty.",
    "toner": "Toner cartridges are consumables, not replacement parts.",
}
PART_QUERY = "where is XQ7731"
