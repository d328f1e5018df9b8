// Runs an rvm-node TensorFlow.js export in Node.js: tfjs with the WASM backend (no tfjs-node).
//
//   node run.js MODEL_DIR [--threads N]
//
// The same protocol as `tf_worker.py serve`: one JSON line describing the model as TF.js sees it
// (signature inputs and outputs with their shapes, userDefinedMetadata), then for each request
// line {"src": IN.npy, "out": PREFIX or null, "reset": bool}, IN float32 [T, H, W, 3], the T
// frames run one by one with the recurrent state carried (from full-shape zeros at the start or
// on reset); PREFIX_fgr.npy and PREFIX_pha.npy ([T, H, W, C]) are written and the reply is
// {"ms": [inference time of each frame]}.
'use strict';

const fs = require('fs');
const path = require('path');
const readline = require('readline');
const tf = require('@tensorflow/tfjs');
const wasm = require('@tensorflow/tfjs-backend-wasm');

const OUTPUTS = ['fgr', 'pha', 'r1o', 'r2o', 'r3o', 'r4o'];
const STATES = ['r1i', 'r2i', 'r3i', 'r4i'];

function readNpy(file) {
  const bytes = fs.readFileSync(file);
  if (bytes.toString('latin1', 1, 6) !== 'NUMPY') throw new Error(`${file}: not a .npy file`);
  const major = bytes[6];
  const headerLength = major === 1 ? bytes.readUInt16LE(8) : bytes.readUInt32LE(8);
  const start = (major === 1 ? 10 : 12) + headerLength;
  const header = bytes.toString('latin1', major === 1 ? 10 : 12, start);
  if (!/'descr':\s*'<f4'/.test(header) || /'fortran_order':\s*True/.test(header)) {
    throw new Error(`${file}: expected little-endian float32 in C order, got ${header.trim()}`);
  }
  const shape = header.match(/'shape':\s*\(([^)]*)\)/)[1].split(',').filter((s) => s.trim()).map(Number);
  const copy = new Float32Array(bytes.length > start ? (bytes.length - start) / 4 : 0);
  new Uint8Array(copy.buffer).set(bytes.subarray(start));
  return { shape, data: copy };
}

function writeNpy(file, shape, data) {
  let header = `{'descr': '<f4', 'fortran_order': False, 'shape': (${shape.join(', ')}${shape.length === 1 ? ',' : ''}), }`;
  header += ' '.repeat(64 - ((10 + header.length + 1) % 64)) + '\n';
  const prefix = Buffer.alloc(10);
  prefix.write('\x93NUMPY', 0, 'latin1');
  prefix[6] = 1;
  prefix[7] = 0;
  prefix.writeUInt16LE(header.length, 8);
  fs.writeFileSync(file, Buffer.concat([prefix, Buffer.from(header, 'latin1'), Buffer.from(data.buffer, data.byteOffset, data.byteLength)]));
}

async function loadModel(dir) {
  // tf.io.fileSystem needs tfjs-node; read model.json and the shards ourselves.
  const json = JSON.parse(fs.readFileSync(path.join(dir, 'model.json'), 'utf8'));
  const weightSpecs = [];
  const shards = [];
  for (const group of json.weightsManifest) {
    weightSpecs.push(...group.weights);
    for (const shard of group.paths) shards.push(fs.readFileSync(path.join(dir, shard)));
  }
  const all = Buffer.concat(shards);
  const weightData = all.buffer.slice(all.byteOffset, all.byteOffset + all.byteLength);
  const model = await tf.loadGraphModel(
    tf.io.fromMemory({ modelTopology: json.modelTopology, weightSpecs, weightData, signature: json.signature }),
  );
  return { model, json };
}

function shapeOf(info) {
  return info.tensorShape.dim.map((d) => Number(d.size));
}

async function main() {
  const args = process.argv.slice(2);
  const dir = args[0];
  const threadsAt = args.indexOf('--threads');
  if (!dir) throw new Error('usage: node run.js MODEL_DIR [--threads N]');
  if (threadsAt >= 0) wasm.setThreadsCount(Number(args[threadsAt + 1]));
  wasm.setWasmPaths(path.join(__dirname, 'node_modules', '@tensorflow', 'tfjs-backend-wasm', 'dist') + path.sep);
  if (!(await tf.setBackend('wasm'))) throw new Error('the tfjs WASM backend did not start');
  await tf.ready();
  const { model, json } = await loadModel(dir);
  const signature = json.signature;
  const described = {
    backend: tf.getBackend(),
    tfjs: tf.version.tfjs,
    inputNodes: model.inputNodes,
    outputNodes: model.outputNodes,
    inputs: Object.fromEntries(Object.entries(signature.inputs).map(([k, v]) => [k, shapeOf(v)])),
    outputs: Object.fromEntries(Object.entries(signature.outputs).map(([k, v]) => [k, shapeOf(v)])),
    metadata: (json.userDefinedMetadata || {}).rvm_node || null,
  };
  const zeros = () => STATES.map((name) => tf.zeros(described.inputs[name]));
  let state = zeros();
  process.stdout.write(JSON.stringify(described) + '\n');

  const lines = readline.createInterface({ input: process.stdin, terminal: false });
  for await (const line of lines) {
    if (!line.trim()) continue;
    const request = JSON.parse(line);
    if (request.reset) {
      tf.dispose(state);
      state = zeros();
    }
    const src = readNpy(request.src);
    const [count, height, width, channels] = src.shape;
    const size = height * width * channels;
    const times = [];
    const fgr = new Float32Array(count * height * width * 3);
    const pha = new Float32Array(count * height * width);
    for (let t = 0; t < count; t++) {
      const frame = tf.tensor4d(src.data.subarray(t * size, (t + 1) * size), [1, height, width, channels]);
      const feed = { src: frame };
      STATES.forEach((name, i) => { feed[name] = state[i]; });
      const start = process.hrtime.bigint();
      const out = model.execute(feed, OUTPUTS);
      const [f, p] = await Promise.all([out[0].data(), out[1].data()]);  // waits for the backend
      times.push(Number(process.hrtime.bigint() - start) / 1e6);
      fgr.set(f, t * f.length);
      pha.set(p, t * p.length);
      tf.dispose([frame, out[0], out[1], ...state]);
      state = out.slice(2);
    }
    if (request.out) {
      writeNpy(`${request.out}_fgr.npy`, [count, height, width, 3], fgr);
      writeNpy(`${request.out}_pha.npy`, [count, height, width, 1], pha);
    }
    process.stdout.write(JSON.stringify({ ms: times }) + '\n');
  }
}

main().catch((error) => {
  process.stderr.write(`run.js: ${error && error.message ? error.message : error}\n`);
  process.exit(1);
});
