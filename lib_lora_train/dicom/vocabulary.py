"""Controlled vocabulary shared by de-identification and captioning.

(0018,0015) Body Part Examined is free CS text in practice: a value survives
de-identification, and reaches a caption, only if it folds to a key of
:data:`BODY_PART_TERMS`, so a name typed into it can never pass through.
"""


def fold_body_part(value):
    """Fold a Body Part Examined value for lookup: upper case, letters and digits only."""
    return "".join(ch for ch in str(value or "").upper() if ch.isalnum())


# (0018,0015) Body Part Examined, folded to upper case without separators -> caption phrase.
# Keys follow PS3.16 Annex L plus common free-text variants (including German ones).
BODY_PART_TERMS = {
    "ABDOMEN": "abdomen",
    "ABDOMENPELVIS": "abdomen and pelvis",
    "ABDPELV": "abdomen and pelvis",
    "ANKLE": "ankle",
    "ARM": "arm",
    "BRAIN": "brain",
    "BREAST": "breast",
    "CHEST": "chest",
    "THORAX": "chest",
    "CHESTABDOMEN": "chest and abdomen",
    "CHESTABDPELVIS": "chest, abdomen and pelvis",
    "CHESTABDPELV": "chest, abdomen and pelvis",
    "CLAVICLE": "clavicle",
    "COCCYX": "coccyx",
    "CSPINE": "cervical spine",
    "HWS": "cervical spine",
    "TSPINE": "thoracic spine",
    "BWS": "thoracic spine",
    "LSPINE": "lumbar spine",
    "LWS": "lumbar spine",
    "SSPINE": "sacrum",
    "SACRUM": "sacrum",
    "SPINE": "spine",
    "WHOLESPINE": "spine",
    "ELBOW": "elbow",
    "EXTREMITY": "extremity",
    "FINGER": "finger",
    "FOOT": "foot",
    "FOREARM": "forearm",
    "HAND": "hand",
    "HEAD": "head",
    "SKULL": "head",
    "KOPF": "head",
    "SCHAEDEL": "head",
    "HEADNECK": "head and neck",
    "HEART": "heart",
    "HIP": "hip",
    "JAW": "jaw",
    "KIDNEY": "kidney",
    "KNEE": "knee",
    "LEG": "leg",
    "LIVER": "liver",
    "LUNG": "lung",
    "NECK": "neck",
    "PANCREAS": "pancreas",
    "PELVIS": "pelvis",
    "PROSTATE": "prostate",
    "SHOULDER": "shoulder",
    "SINUS": "sinuses",
    "THYROID": "thyroid",
    "WHOLEBODY": "whole body",
    "WRIST": "wrist",
}
