// Presets of the generate form. (Training presets are the service's: GET /v1/training-presets.)

// Output sizes of the generate form (width x height, multiples of 32).
export const SIZE_PRESETS = [
  { label: "Square 1024", width: 1024, height: 1024 },
  { label: "Portrait 832×1216", width: 832, height: 1216 },
  { label: "Landscape 1216×832", width: 1216, height: 832 },
  { label: "Wide 1344×768", width: 1344, height: 768 },
  { label: "Square 2048", width: 2048, height: 2048 },
  { label: "Small 512", width: 512, height: 512 },
];
