//! The `/big/{bytes}` route of the test apps: `bytes` of `x`, streamed in 16 KiB
//! chunks (so chunked on HTTP/1.1, in several DATA frames on HTTP/2).

use axum::body::{Body, Bytes};
use axum::extract::Path;

pub(crate) async fn big(Path(bytes): Path<usize>) -> Body {
    const CHUNK: usize = 16 * 1024;
    let chunks = (0..bytes.div_ceil(CHUNK)).map(move |i| {
        let len = CHUNK.min(bytes - i * CHUNK);
        Ok::<_, std::io::Error>(Bytes::from(vec![b'x'; len]))
    });
    Body::from_stream(futures_util::stream::iter(chunks))
}
