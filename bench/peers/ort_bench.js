// Times an ONNX model with ONNX Runtime (onnxruntime-node) on an NPY input.
// Usage: node ort_bench.js model.onnx input.npy [-n 30] [--warmup 5] [--threads 2] [--out y.npy]
// Prints {"median_ms", "p10_ms", "p90_ms", "runs", "threads"} as JSON. Run one model per process:
// ORT's thread pools spin, so two sessions timed side by side slow each other down.
'use strict';
const fs = require('fs');
const ort = require('onnxruntime-node');

function readNpy(path) {
  const buf = fs.readFileSync(path);
  if (buf.toString('latin1', 0, 6) !== '\x93NUMPY') throw new Error(`${path}: not an NPY file`);
  const major = buf[6];
  const headerLen = major === 1 ? buf.readUInt16LE(8) : buf.readUInt32LE(8);
  const start = major === 1 ? 10 : 12;
  const header = buf.toString('latin1', start, start + headerLen);
  const descr = /'descr':\s*'([^']+)'/.exec(header)[1];
  if (descr !== '<f4' || /'fortran_order':\s*True/.test(header)) {
    throw new Error(`${path}: need little-endian float32 in C order, got ${descr}`);
  }
  const shape = /'shape':\s*\(([^)]*)\)/.exec(header)[1].split(',').filter((s) => s.trim()).map(Number);
  const bytes = buf.subarray(start + headerLen);
  const data = new Float32Array(bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.length));
  return { data, shape };
}

function writeNpy(path, data, shape) {
  let header = `{'descr': '<f4', 'fortran_order': False, 'shape': (${shape.join(', ')},), }`;
  header += ' '.repeat(63 - ((10 + header.length) % 64)) + '\n';
  const pre = Buffer.alloc(10);
  pre.write('\x93NUMPY', 0, 'latin1');
  pre[6] = 1;
  pre.writeUInt16LE(header.length, 8);
  fs.writeFileSync(path, Buffer.concat([pre, Buffer.from(header, 'latin1'),
    Buffer.from(data.buffer, data.byteOffset, data.byteLength)]));
}

function option(args, name, fallback) {
  const i = args.indexOf(name);
  return i >= 0 ? args[i + 1] : fallback;
}

const quantile = (sorted, q) => sorted[Math.min(sorted.length - 1, Math.round(q * (sorted.length - 1)))];

async function main() {
  const args = process.argv.slice(2);
  if (args.length < 2) {
    console.error('usage: node ort_bench.js model.onnx input.npy [-n 30] [--warmup 5] [--threads 2] [--out y.npy]');
    process.exit(2);
  }
  const [model, inputPath] = args;
  const runs = Number(option(args, '-n', 30));
  const warmup = Number(option(args, '--warmup', 5));
  const threads = Number(option(args, '--threads', 2));
  const session = await ort.InferenceSession.create(model, {
    intraOpNumThreads: threads, interOpNumThreads: 1, executionMode: 'sequential',
    graphOptimizationLevel: 'all', logSeverityLevel: 3,
  });
  const { data, shape } = readNpy(inputPath);
  const feeds = { [session.inputNames[0]]: new ort.Tensor('float32', data, shape) };
  let out;
  for (let i = 0; i < warmup; i++) out = await session.run(feeds);
  const times = [];
  for (let i = 0; i < runs; i++) {
    const t0 = process.hrtime.bigint();
    out = await session.run(feeds);
    times.push(Number(process.hrtime.bigint() - t0) / 1e6);
  }
  const outPath = option(args, '--out', null);
  if (outPath) {
    const y = out[session.outputNames[0]];
    writeNpy(outPath, y.data, y.dims);
  }
  times.sort((a, b) => a - b);
  console.log(JSON.stringify({
    median_ms: quantile(times, 0.5), p10_ms: quantile(times, 0.1), p90_ms: quantile(times, 0.9),
    runs, threads,
  }));
}

main().catch((e) => { console.error(e.message || e); process.exit(1); });
