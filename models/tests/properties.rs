//! Property tests (proptest) of the input stages: PCM decoding, resampling and the Spotter's handling
//! of arbitrary bytes. Whatever a client sends, these never panic, accept exactly what the documented
//! rules accept, consume nothing of a rejected chunk, and give the same result whatever the chunking.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use kws_models::pcm::{F32_MAX_ABS, MAX_CHANNELS, MAX_SAMPLE_RATE, MIN_SAMPLE_RATE};
use kws_models::resample::StreamResampler;
use kws_models::{DecoderConfig, Encoding, PcmFormat, Spotter, StreamConfig, WindowBatch};
use proptest::prelude::*;

fn encoding() -> impl Strategy<Value = Encoding> {
    prop_oneof![Just(Encoding::S16Le), Just(Encoding::F32Le)]
}

fn format() -> impl Strategy<Value = PcmFormat> {
    (encoding(), MIN_SAMPLE_RATE..=MAX_SAMPLE_RATE, 1..=MAX_CHANNELS)
        .prop_map(|(e, r, c)| PcmFormat::new(e, r, c).expect("in range"))
}

/// Bytes that are often valid: f32 values drawn from normal audio and from the bad cases.
fn f32_samples() -> impl Strategy<Value = Vec<u8>> {
    let value = prop_oneof![
        8 => -1.0f32..=1.0,
        1 => -F32_MAX_ABS..=F32_MAX_ABS,
        1 => Just(f32::NAN),
        1 => Just(f32::INFINITY),
        1 => Just(f32::NEG_INFINITY),
        1 => any::<f32>(),
    ];
    proptest::collection::vec(value, 0..600).prop_map(|v| v.iter().flat_map(|x| x.to_le_bytes()).collect())
}

fn bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![proptest::collection::vec(any::<u8>(), 0..2400), f32_samples()]
}

/// The documented acceptance rule of a chunk (besides emptiness, which the service checks).
fn acceptable(fmt: &PcmFormat, b: &[u8]) -> bool {
    if !b.len().is_multiple_of(fmt.frame_bytes()) {
        return false;
    }
    match fmt.encoding() {
        Encoding::S16Le => true,
        Encoding::F32Le => b.chunks_exact(4).all(|c| {
            let v = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
            v.is_finite() && v.abs() <= F32_MAX_ABS
        }),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn pcm_decoding_accepts_exactly_the_documented_chunks(fmt in format(), b in bytes()) {
        let mut out = vec![0.25f32];
        let r = fmt.decode_into(&b, &mut out);
        prop_assert_eq!(r.is_ok(), acceptable(&fmt, &b), "{:?} {} bytes: {:?}", fmt, b.len(), r);
        prop_assert_eq!(fmt.validate(&b).is_ok(), r.is_ok());
        match r {
            Ok(frames) => {
                prop_assert_eq!(frames, b.len() / fmt.frame_bytes());
                prop_assert_eq!(out.len(), 1 + frames);
                let bound = if fmt.encoding() == Encoding::S16Le { 1.0 } else { F32_MAX_ABS };
                prop_assert!(out.iter().all(|v| v.is_finite() && v.abs() <= bound));
            }
            Err(e) => {
                prop_assert_eq!(out, vec![0.25f32], "nothing appended on error");
                prop_assert!(!e.to_string().is_empty());
            }
        }
    }

    #[test]
    fn pcm_decoding_is_chunk_invariant(fmt in format(), frames in 0usize..300, cuts in proptest::collection::vec(0usize..300, 0..6), seed in any::<u64>()) {
        // Valid audio of `frames` frames, split at whole frames.
        let n = frames * fmt.channels() as usize;
        let mut state = seed | 1;
        let samples: Vec<f32> = (0..n).map(|_| {
            state ^= state << 13; state ^= state >> 7; state ^= state << 17;
            (state % 20_001) as f32 / 10_000.0 - 1.0
        }).collect();
        let b: Vec<u8> = match fmt.encoding() {
            Encoding::S16Le => samples.iter().flat_map(|v| ((v * 32767.0) as i16).to_le_bytes()).collect(),
            Encoding::F32Le => samples.iter().flat_map(|v| v.to_le_bytes()).collect(),
        };
        let mut whole = Vec::new();
        fmt.decode_into(&b, &mut whole).unwrap();
        let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(frames) * fmt.frame_bytes()).collect();
        cuts.push(0);
        cuts.push(b.len());
        cuts.sort_unstable();
        let mut parts = Vec::new();
        for w in cuts.windows(2) {
            fmt.decode_into(&b[w[0]..w[1]], &mut parts).unwrap();
        }
        prop_assert_eq!(whole, parts);
    }

    #[test]
    fn formats_outside_the_ranges_are_refused(e in encoding(), rate in any::<u32>(), ch in any::<u16>()) {
        let ok = (MIN_SAMPLE_RATE..=MAX_SAMPLE_RATE).contains(&rate) && (1..=MAX_CHANNELS).contains(&ch);
        let r = PcmFormat::new(e, rate, ch);
        prop_assert_eq!(r.is_ok(), ok);
        if let Err(e) = r {
            let m = e.to_string();
            prop_assert!(m.contains("8000..=192000") || m.contains("1..=8"), "{}", m);
        }
    }
}

proptest! {
    // Building a resampler for an arbitrary rate costs milliseconds: fewer cases.
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn resampling_has_the_exact_length_and_is_chunk_invariant(
        rate in MIN_SAMPLE_RATE..=MAX_SAMPLE_RATE,
        len_ms in 0u64..400,
        cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..5),
    ) {
        let n = (u64::from(rate) * len_ms / 1000) as usize;
        let x: Vec<f32> = (0..n).map(|i| (i as f32 * 0.37).sin() * 0.5).collect();
        let run = |bounds: &[usize]| {
            let mut r = StreamResampler::new(rate).unwrap();
            let mut out = Vec::new();
            for w in bounds.windows(2) {
                r.process(&x[w[0]..w[1]], &mut out).unwrap();
            }
            r.finish(&mut out).unwrap();
            out
        };
        let whole = run(&[0, n]);
        prop_assert_eq!(whole.len() as u64, n as u64 * 16_000 / u64::from(rate));
        prop_assert!(whole.iter().all(|v| v.is_finite()));
        let mut bounds: Vec<usize> = cuts.iter().map(|i| if n == 0 { 0 } else { i.index(n + 1) }).collect();
        bounds.push(0);
        bounds.push(n);
        bounds.sort_unstable();
        let parts = run(&bounds);
        prop_assert_eq!(parts.len(), whole.len());
        let max = whole.iter().zip(&parts).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
        prop_assert!(max < 1e-5, "rate {} cuts {:?}: max diff {}", rate, bounds, max);
    }

    #[test]
    fn the_spotter_survives_arbitrary_chunks_and_accounts_for_all_audio(
        fmt in format(),
        chunks in proptest::collection::vec(bytes(), 1..8),
    ) {
        let cfg = StreamConfig {
            format: fmt,
            hop_frames: 2,
            decoder: DecoderConfig { smoothing_ms: 100, refractory_ms: 500, thresholds: vec![Some(0.5); 10] },
            cascade: None,
        };
        let mut s = Spotter::new(cfg, 12).unwrap();
        let mut batch = WindowBatch::new();
        let mut frames = 0u64;
        for c in &chunks {
            let before = (s.frames_received(), batch.len());
            match s.push_pcm(c, &mut batch) {
                Ok(n) => {
                    prop_assert!(acceptable(&fmt, c));
                    frames += n as u64;
                }
                Err(_) => {
                    prop_assert!(!acceptable(&fmt, c));
                    prop_assert_eq!((s.frames_received(), batch.len()), before, "a rejected chunk is not consumed");
                }
            }
        }
        s.finish(&mut batch).unwrap();
        prop_assert_eq!(s.frames_received(), frames);
        prop_assert_eq!(s.audio_ms_processed(), s.audio_ms_received(), "audio in == audio processed");
        prop_assert!(batch.features().iter().all(|v| v.is_finite()));
        for (i, w) in batch.windows().iter().enumerate() {
            prop_assert_eq!(w.seq, i as u64);
            let probs = [0.3f32; 12];
            prop_assert!(s.apply(w, &probs).is_ok());
        }
    }
}
