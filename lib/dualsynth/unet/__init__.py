"""U-Net segmentation of micrographs (segmentation-models 1.0.1, Keras 2 / ``tf_keras``).

Modules, one concern each (only :mod:`.budget` and :mod:`.record` are free of TensorFlow; importing this package
imports none of them, so both stay cheap for the batch runner and the results table):

* :mod:`.model` - :class:`UNetConfig`, :class:`InputAdapter`, :func:`build_unet`, :func:`unet_core`;
* :mod:`.weights` - :func:`load_weights_h5` (Keras 2 HDF5 by weight name, Keras 3 files by structure);
* :mod:`.data` - input checks, :func:`make_dataset` (``tf.data``), :func:`build_augmentation`;
* :mod:`.files` - the training folder: checkpoint + ``state.json``, ``model.h5``, ``history.csv``, summary;
* :mod:`.train` - loss, callbacks, :func:`train_unet` (resumable);
* :mod:`.infer` - :func:`predict_proba`, :func:`predict`, :func:`evaluate_model`, :func:`load_unet`;
* :mod:`.budget` - how many updates a run gets (06's ``budget``: ``fixed`` or ``epochs``), matched controls;
* :mod:`.pretrain` - pretrain on synthetic, then fine-tune on real (the ``PT_`` variants): two ``train_unet`` stages.
* :mod:`.plain` - the small plain U-Net (``encoder: plain``, the quick preset's), built in place of ``sm.Unet``;
* :mod:`.recipe` - warm-up + cosine schedule, input statistics (``normalise: patches``: the input adapter then
  z-scores instead of applying the encoder's ImageNet preprocessing), class weights;
* :mod:`.pretext` - inpainting pretraining without labels, a local substitute for ImageNet weights.
* :mod:`.record` - a run's record ``metrics.json``: its fields, :func:`~.record.metrics_record` (06 builds it),
  :func:`~.record.write_metrics`, and what makes it complete (:func:`~.record.metrics_complete`: the study's resume
  test, the results table's filter).

``dualsynth.segmentation`` re-exports the public names (and the old private ones tests use) from here.

Set-up after Volman Stern et al. (2024): a segmentation-models U-Net (encoder
``efficientnetb3`` by default) with a softmax head over ``num_classes`` phases,
trained with categorical Dice + focal loss (``dice + focal_weight * focal``),
Adam (lr 1e-3), ``EarlyStopping`` (patience 15) and ``ReduceLROnPlateau``
(patience 5), both watching the validation IoU score (``val_iou_score``,
mode ``max``), batch 2 for training and 1 for validation, up to 200 epochs of
``len(train) // batch_size`` steps.  Every number is a field of
:class:`UNetConfig`.

Conventions (the same in training, :func:`predict` and :func:`load_unet`):

* **Images** are ``uint8`` arrays ``(N, H, W, C)`` (``(N, H, W)`` = grey), ``C``
  = ``in_channels`` (1 or 3).  The model's input is float32 in ``[0, 1]``
  (``uint8 / 255``); :func:`make_dataset` and :func:`predict` do that scaling.
* **Inside the model** a weight-free :class:`InputAdapter` layer maps the
  ``[0, 1]`` input to what the encoder expects: a grey channel is repeated to
  three channels (folded into the affine map), and the encoder's own ImageNet
  preprocessing (``sm.get_preprocessing(encoder)``, e.g. ``torch`` mean/std
  normalisation for EfficientNets, identity on 0..255 for ResNets, BGR + mean
  for VGG) is applied as a fixed per-pixel affine map.  It is applied *always*,
  whatever ``encoder_weights`` is, so a weight file is valid for every
  initialisation and a user calling ``model.predict(images / 255)`` directly
  gets the right answer.  Grey and RGB models have identical weights, so
  weight files are interchangeable between them.
* The model is ``image -> input_adapter -> unet`` where ``unet`` is the plain
  ``sm.Unet`` (see :func:`unet_core`).  Height and width must be multiples of
  32 for training; :func:`predict` pads other sizes (reflection) and crops.
* **Masks** are class-index arrays ``(N, H, W)`` with values ``0..num_classes-1``;
  the datasets one-hot encode them.

``encoder_weights``: ``"imagenet"`` (passed to segmentation-models; needs
internet on first use), ``None`` / ``"none"`` / ``"null"`` (random
initialisation) or the path of a Keras weight file (:func:`load_weights_h5`).
A Keras 2 HDF5 file (``model.save_weights("x.h5")``, or an ImageNet weight
file such as ``efficientnet-b3_..._notop.h5``) is loaded *by weight name*
(``layer/variable``) with shape checks into the whole U-Net: a file from any
dualsynth or plain sm U-Net with the same encoder restores everything (a
different ``num_classes`` only skips ``final_conv``), a classifier file of the
encoder fills the encoder, a file matching nothing raises ``ValueError``.  A
Keras-3-style file (``save_weights("x.weights.h5")``) has no layer names and
is loaded by structure, all or nothing.

Training output (``out_dir``): ``unet_config.json``, ``model.h5`` (the best
epoch's weights, Keras 2 HDF5 weights format as written by
``save_weights("model.h5")`` - not a full saved model; rewritten when the
validation IoU improves), ``history.csv`` (one row per finished epoch;
``epoch`` is 1-based; ``lr`` is the learning rate used *during* that epoch)
``checkpoint/`` (weights + Adam state of the last finished epoch as a
``tf.train.Checkpoint``, with ``state.json``: history, callback states, data
fingerprint) and, once training has ended, ``train_summary.json``.  Calling :func:`train_unet` again on the same ``out_dir``
continues from that checkpoint (after an interruption, or to extend a
finished run to more epochs), so the history has no duplicated epochs.
Keras' own ``BackupAndRestore`` is not used: it deletes its backup when
``fit`` ends, so it cannot extend a finished run, and it does not save the
states of ``EarlyStopping`` / ``ReduceLROnPlateau`` or the history.

Shuffling and augmentation are functions of ``(seed, epoch, position)``, not of
an iterator's state, so a resumed run sees the same batches as an
uninterrupted one.  The encoder's dropout draws from TensorFlow's global RNG
and CPU kernels are not guaranteed to be bit-reproducible, so the losses of a
resumed run agree with an uninterrupted one only approximately.

Import :mod:`dualsynth` before TensorFlow (the modules here do it on import).
"""
