"""The view stage: what a person looks at after a run.

Modules:
  report    the contact sheet (static HTML) and PNG sheets of one run
  compare   two runs (or a baseline and a run) paired by coordinates (`renderer diff`)
  bands     SSIM and pHash, the pass / review / fail bands, calibration from provider noise
  baseline  named baselines: set (with calibration), load, approve reviewed pairs
  ciout     JUnit XML and the Markdown summary of a comparison
  diffpage  the comparison page: side by side, overlay, flicker, wipe; band filters; decisions
  page      the viewer page both use (web/: its HTML, script and stylesheet, package data)

Nothing is imported here: the views load Pillow.
"""
