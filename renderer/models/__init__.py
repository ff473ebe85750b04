"""Models stage: what a fal endpoint accepts and returns.

Modules:
  documents  parsers of model documents (fal pages, llms.txt markdown, proxy tables) → EndpointDoc
  generate   build time: EndpointDocs → one JSON Schema per endpoint under schemas/, plus the index
  schemas    run time: SchemaRegistry loads those schemas and reports Violations of an input
  sizes      fal's image-size presets and the pixel-size helpers

Nothing is re-exported here: schemas imports jsonschema, which the CLI's start-up should not pay for.
"""
