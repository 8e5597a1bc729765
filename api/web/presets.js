// Training presets of the form. The API has no preset field for trainings, so a preset only fills the form:
// every field is reset to the API's default (read from the OpenAPI document), then the preset's values are put
// on top. What is sent is always what the person sees (and may still change).
export const TRAINING_PRESETS = {
  quick: {
    label: "Quick",
    summary: "a first look at the style",
    values: { steps: 500, rank: 8, alpha: 8, learning_rate: 2e-4, resolution: 512, batch_size: 1,
              sample_every: 100, lr_schedule: "constant", warmup_steps: 0 },
  },
  standard: {
    label: "Standard",
    summary: "the service's defaults",
    values: {},
  },
  high: {
    label: "High quality",
    summary: "more capacity, longer, cosine decay",
    values: { steps: 5000, rank: 32, alpha: 32, learning_rate: 1e-4, resolution: 1024, batch_size: 1,
              sample_every: 500, lr_schedule: "cosine", warmup_steps: 200 },
  },
};

// Output sizes of the generate form (width x height, multiples of 32).
export const SIZE_PRESETS = [
  { label: "Square 1024", width: 1024, height: 1024 },
  { label: "Portrait 832×1216", width: 832, height: 1216 },
  { label: "Landscape 1216×832", width: 1216, height: 832 },
  { label: "Wide 1344×768", width: 1344, height: 768 },
  { label: "Square 2048", width: 2048, height: 2048 },
  { label: "Small 512", width: 512, height: 512 },
];
