"""Reading bounding-box annotations: the parsers of every layout, and the
crop of a box (the run's --crop_to_boxes, retrain/data/boxes.py, and
label_image --boxes both use them; nothing here imports TensorFlow).

Annotation layouts (--boxes; 'auto' picks the one that is unambiguous):

- voc_tree: Pascal VOC's own tree, `image_dir/JPEGImages/<id>.jpg` and
  `image_dir/Annotations/<id>.xml`; `ImageSets/Main/{train,val,test}.txt`
  (one id per line), when present, is the split, used as given.
- stanford_dogs: `image_dir/Images/<class>/<id>.jpg` and
  `image_dir/Annotation/<class>/<id>` (VOC XML without an extension); a box
  is labelled with its folder's class, not the XML's name.
- voc: a VOC XML file beside each image, same stem (`a/b.jpg`, `a/b.xml`),
  as labelImg and CVAT write them.
- csv: --boxes_csv, one row per box; columns found by header name in any
  order: the image (path / filename / image / file), the label (label /
  class / name / cell_type, or --boxes_label_column) and xmin, ymin, xmax,
  ymax. Paths are relative to --image_dir when given, else to the CSV's
  folder.

Coordinates are pixels of the upright photo (EXIF orientation applied),
VOC-style: xmin, ymin the top-left pixel, xmax, ymax the bottom-right one.
The size written in a VOC XML is not trusted (real files say 0, or the size
of another copy of the photo): the size read from the image file is.

Modules: box (Box, Annotations), voc (VOC XML, VOC tree, Stanford Dogs),
table (CSV), layouts (choosing and reading a layout), crop (a box's crop as
fractions of the photo; the boxes of one file to classify).
"""
