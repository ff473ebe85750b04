"""The view stage: what a person looks at after a run.

Modules:
  report    the contact sheet (static HTML) and PNG sheets of one run
  compare   two runs compared image by image (`renderer diff`), with the verdict per pair
  diffpage  the comparison page: A | B | difference per pair
  page      the viewer page both use (web/: its HTML, script and stylesheet, package data)

Nothing is imported here: the views load Pillow.
"""
