// GnuSpeech (articulatory synthesis, WebAssembly) for kws_train.synth: one node process per batch.
//
//   node synth.mjs jobs.json
//
// jobs.json: [{"text", "voice": male|female|large_child|baby, "tempo", "pitch" (semitones added to the
// voice's reference glottal pitch), "vtl" (vocal tract length factor), "breathiness" (%, absolute),
// "out": "/path/out.wav"}, ...]. Writes 44.1 kHz mono 16-bit WAVs; the caller resamples to 16 kHz.
// Deterministic: GnuSpeech's random intonation and intonation drift (seeded from the clock) are off;
// the prosody variation comes from the caller's seeded parameters instead.
import { readFileSync, writeFileSync } from 'node:fs'
import { wrapEmscriptenModuleHeap } from 'wasm-heap-manager'
import { defaultTrmControlModelFileContent } from '@echogarden/gnuspeech-wasm/dist/utilities/DefaultTrmControlModel.js'
import initializer from '@echogarden/gnuspeech-wasm/wasm/gnuspeech.js'

const jobs = JSON.parse(readFileSync(process.argv[2], 'utf8'))
const m = await initializer()
const heap = wrapEmscriptenModuleHeap(m)
const dataPath = '/data/en'
const baseVoices = {}

function setKey(text, key, value) {
  const re = new RegExp(`^${key} = .*$`, 'm')
  if (!re.test(text)) throw new Error(`no key ${key}`)
  return text.replace(re, `${key} = ${value}`)
}

for (const job of jobs) {
  if (!['male', 'female', 'large_child', 'baby'].includes(job.voice)) throw new Error(`voice ${job.voice}`)
  baseVoices[job.voice] ??= new TextDecoder().decode(m.FS.readFile(`${dataPath}/voice_${job.voice}.txt`))
  let voice = baseVoices[job.voice]
  const vtl = parseFloat(voice.match(/^vocal_tract_length = (.*)$/m)[1])
  const ref = parseFloat(voice.match(/^reference_glottal_pitch = (.*)$/m)[1])
  voice = setKey(voice, 'vocal_tract_length', (vtl * job.vtl).toFixed(3))
  voice = setKey(voice, 'reference_glottal_pitch', (ref + job.pitch).toFixed(3))
  voice = setKey(voice, 'breathiness', job.breathiness.toFixed(3))
  m.FS.writeFile(`${dataPath}/voice_kws.txt`, voice)
  let cfg = defaultTrmControlModelFileContent
  cfg = setKey(cfg, 'voice_name', 'kws')
  cfg = setKey(cfg, 'tempo', job.tempo.toFixed(4))
  cfg = setKey(cfg, 'random_intonation', '0')
  cfg = setKey(cfg, 'intonation_drift', '0')
  m.FS.writeFile(`${dataPath}/trm_control_model.txt`, cfg)
  const text = heap.allocNullTerminatedUtf8String(job.text)
  const out = heap.allocNullTerminatedUtf8String('./out.wav')
  const dir = heap.allocNullTerminatedUtf8String(dataPath)
  const params = heap.allocNullTerminatedUtf8String('./out-params.txt')
  m._GnuSpeech_synthesizeToFile(text.address, out.address, dir.address, params.address, false)
  writeFileSync(job.out, m.FS.readFile('./out.wav'))
  for (const r of [text, out, dir, params]) r.free()
}
