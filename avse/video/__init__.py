"""Real video in, one voice per face out.

=============  ==============================================================================
module         what it does
=============  ==============================================================================
media          the fixed mouth crops of face-centred clips, whole-clip decoding (recipes),
               read_audio, resample, set_display_rotation
frames         streaming decode with PyAV: probe, frames on the 25 fps grid (by timestamp,
               rotation applied), full-range gray and RGB frames, audio to 16 kHz mono on disk
mux            one mp4 per face: the source video stream copied, the extracted audio muxed
detect         MTCNN face detector (facenet-pytorch; the weights ship in its wheel)
track          IoU tracking, gap interpolation, shot cuts, smoothing, appearance merging
crops          the VoxCeleb2/LRS3 face-centred 224x224 framing and the mouth crop presets
lipread        the published lip-reading preprocessing (OpenCV's gray through RGB, 224, the
               central 112x112) without OpenCV
faces          pass 1: decode, detect, track, write each track's face frames to disk
longform       pass 2: chunked extraction with overlap and cross-fade, written incrementally
scenes         test and demo videos built from a real photograph, mouths in sync with voices
=============  ==============================================================================

``avse-extract`` (:mod:`avse.inference`) runs the two passes.
"""
