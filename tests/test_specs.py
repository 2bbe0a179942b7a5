"""featcache.specs: the typed specs a manifest is made of, as a user reads them."""

from featcache.specs import TransformSpec


def test_a_view_describes_its_resize_crop_interpolation_and_normalisation():
    photo = TransformSpec(image_size=224, resize=256)
    assert photo.describe() == "224 px: resize 256 (shorter side, bilinear) + centre crop 224, ImageNet mean/std"
    whole = TransformSpec(image_size=32, resize=32, resize_mode="square")
    assert whole.describe() == ("32 px: whole image resized to 32x32 (bilinear; none if already 32x32), no crop, "
                                "ImageNet mean/std")
    nts = TransformSpec(image_size=448, resize=600, resize_mode="square", interpolation="bicubic", antialias=False,
                        mean=(0.5, 0.5, 0.5), std=(0.2505, 0.25, 1))
    assert nts.describe() == ("448 px: resize 600x600 (bicubic, no antialias) + centre crop 448, mean (0.5, 0.5, 0.5) "
                              "std (0.2505, 0.25, 1)")
