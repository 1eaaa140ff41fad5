//! What `Tail` sends: records read from one stream, decoded, filtered by
//! kind, cut into responses of bounded size.
