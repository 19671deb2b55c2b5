"""Stand-in for WebUI 1.10.1 ``modules/processing.py``: the prompt-conditioning caches.

``StableDiffusionProcessing.cached_c``/``cached_uc`` and ``StableDiffusionProcessingTxt2Img.cached_hr_c``/
``cached_hr_uc`` are class attributes (``[None, None]``: cache key, conditioning) that every new
processing object copies in ``__post_init__`` and ``get_conds_with_caching`` fills; ``close`` resets them
unless ``opts.persistent_cond_cache``. Nothing else is modeled.
"""


class StableDiffusionProcessing:
    cached_uc = [None, None]  # noqa: RUF012 (a class attribute in the real module too)
    cached_c = [None, None]  # noqa: RUF012 (a class attribute in the real module too)


class StableDiffusionProcessingTxt2Img(StableDiffusionProcessing):
    cached_hr_uc = [None, None]  # noqa: RUF012 (a class attribute in the real module too)
    cached_hr_c = [None, None]  # noqa: RUF012 (a class attribute in the real module too)


class StableDiffusionProcessingImg2Img(StableDiffusionProcessing):
    pass
