// A render-node client in Node.js, built from protos/rvm_node/v1/matting.proto alone (no rvm-node code):
// what a pipeline in another language does. It streams raw uint8 RGB frames to a node and writes the
// uint16 alpha planes it gets back, frame after frame, to a file.
//
//   node client.js ADDRESS WIDTH HEIGHT FRAMES.rgb OUT.alpha [RATIO]
//
// FRAMES.rgb holds the frames back to back (HxWx3 uint8, rows top first); OUT.alpha receives HxW
// little-endian uint16 per frame. Prints one JSON line: {"frames": N, "accepted": {...}}. On a
// failed call it prints {"error": code, "details": ..., "reason": ...} and exits 1.
"use strict";

const fs = require("fs");
const path = require("path");
const grpc = require("@grpc/grpc-js");
const protoLoader = require("@grpc/proto-loader");

const [address, width, height, framesFile, outFile, ratio] = process.argv.slice(2);
const W = Number(width);
const H = Number(height);
const protos = path.resolve(__dirname, "..", "..", "protos");
const definition = protoLoader.loadSync(path.join(protos, "rvm_node", "v1", "matting.proto"), {
  keepCase: true,
  longs: Number,
  enums: String,
  defaults: true,
  oneofs: true,
  includeDirs: [protos],
});
const v1 = grpc.loadPackageDefinition(definition).rvm_node.v1;
const client = new v1.MattingService(address, grpc.credentials.createInsecure());

const frameBytes = W * H * 3;
const frames = fs.readFileSync(framesFile);
const count = frameBytes > 0 ? Math.floor(frames.length / frameBytes) : 0;
const call = client.Matte();
const out = fs.createWriteStream(outFile);
let accepted = null;
let answered = 0;
let failed = false;
const pending = new Map(); // frame number -> Buffer being filled from parts

call.on("data", (response) => {
  if (response.kind === "accepted") {
    accepted = response.accepted;
    return;
  }
  if (response.kind !== "part") throw new Error(`unexpected response ${response.kind}`);
  const part = response.part;
  let buffer = pending.get(part.number);
  if (buffer === undefined) {
    buffer = Buffer.alloc(Number(part.total_bytes));
    pending.set(part.number, buffer);
  }
  part.data.copy(buffer, Number(part.offset));
  if (Number(part.offset) + part.data.length === buffer.length) {
    out.write(buffer);
    pending.delete(part.number);
    answered += 1;
  }
});
call.on("error", (error) => {
  const info = error.metadata.get("grpc-status-details-bin");
  console.log(JSON.stringify({ error: error.code, details: error.details, has_status_details: info.length > 0 }));
  process.exitCode = 1;
  failed = true;
  out.end();
  client.close();
});
call.on("end", () => {
  if (failed) return;
  out.end(() => {
    console.log(JSON.stringify({ frames: answered, accepted }));
    client.close();
  });
});

call.write({
  open: {
    settings: {
      width: W,
      height: H,
      input_format: "SAMPLE_FORMAT_UINT8",
      output_format: "SAMPLE_FORMAT_UINT16",
      planes: ["PLANE_ALPHA"],
      downsample_ratio: ratio === undefined ? 0 : Number(ratio),
      label: "node.js client",
    },
  },
});
for (let i = 0; i < count; i += 1) {
  const data = frames.subarray(i * frameBytes, (i + 1) * frameBytes);
  call.write({ chunk: { parts: [{ number: 1001 + i, offset: 0, total_bytes: frameBytes, data }] } });
}
call.end(); // half-close: the node answers everything outstanding, then ends with OK
