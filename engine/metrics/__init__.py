"""Sample-quality metrics: Fréchet distance (FID), improved precision / recall, feature
extractors (FID Inception-v3, a bundle's judge network), the judge's class accuracy, and
the ADM (guided-diffusion) evaluation file formats.

Typical use::

    from engine.metrics import (InceptionV3Features, extract_features, frechet_distance, iter_float_batches,
                                load_reference_batch, load_samples, precision_recall_with_baseline)

    extractor = InceptionV3Features("pt_inception-2015-12-05-6726825d.pth", device="cuda")
    fake = extract_features(extractor, load_samples("samples.npz").batches(100))
    real = extract_features(extractor, iter_float_batches(load_reference_batch("ref.npz").images, 100))
    fid = frechet_distance(real, fake)
    pr = precision_recall_with_baseline(real, fake)   # precision, recall, baseline_precision, ...

Pure PyTorch / numpy; nothing is downloaded.
"""

from .adm import (AdmFormatError, ReferenceBatch, SampleBatch, iter_float_batches, load_reference_batch,
                  load_samples, save_samples, to_float_images, to_uint8_images)
from .features import (FeatureExtractor, InceptionV3Features, JudgeFeatures, check_images, class_accuracy,
                       extract_features, judge_predictions)
from .frechet import frechet_distance, frechet_distance_from_stats, gaussian_stats, trace_sqrt_product
from .inception import (WEIGHTS_ENV as INCEPTION_WEIGHTS_ENV, WEIGHTS_FILE as INCEPTION_WEIGHTS_FILE,
                        WEIGHTS_FLAG as INCEPTION_WEIGHTS_FLAG, WEIGHTS_URL as INCEPTION_WEIGHTS_URL, FIDInceptionV3,
                        InceptionWeightsError, load_fid_inception, resolve_weights_path)
from .precision_recall import (knn_radii, precision_recall, precision_recall_with_baseline, real_baseline,
                               split_halves)

__all__ = [
    "AdmFormatError", "ReferenceBatch", "SampleBatch", "iter_float_batches", "load_reference_batch", "load_samples",
    "save_samples", "to_float_images", "to_uint8_images",
    "FeatureExtractor", "InceptionV3Features", "JudgeFeatures", "check_images", "class_accuracy",
    "extract_features", "judge_predictions",
    "frechet_distance", "frechet_distance_from_stats", "gaussian_stats", "trace_sqrt_product",
    "INCEPTION_WEIGHTS_ENV", "INCEPTION_WEIGHTS_FILE", "INCEPTION_WEIGHTS_FLAG", "INCEPTION_WEIGHTS_URL",
    "FIDInceptionV3", "InceptionWeightsError", "load_fid_inception", "resolve_weights_path",
    "knn_radii", "precision_recall", "precision_recall_with_baseline", "real_baseline", "split_halves",
]
