//! The word list synthetic prompts are drawn from: common lowercase English words,
//! each a single token (with or without a leading space) in the byte-level BPE
//! vocabularies of current models, so that n words make close to n tokens even
//! when no tokenizer is given. With `--tokenizer`, `workload` keeps only the words
//! that tokenizer really encodes as one token, and the lengths are exact.

pub const WORDS: &[&str] = &[
    "the", "of", "and", "to", "in", "is", "for", "that", "with", "as", "on", "was", "by", "at", "are",
    "this", "from", "be", "or", "have", "an", "it", "not", "which", "can", "all", "more", "one", "has",
    "their", "but", "will", "also", "new", "other", "about", "time", "there", "some", "been", "when", "who",
    "into", "them", "only", "first", "may", "over", "most", "two", "these", "such", "many", "then", "would",
    "like", "people", "year", "work", "make", "after", "between", "world", "state", "under", "water", "life",
    "school", "during", "house", "place", "city", "group", "system", "number", "part", "case", "while",
    "point", "home", "company", "program", "question", "family", "night", "light", "book", "game", "music",
    "power", "story", "river", "money", "history", "area", "young", "small", "large", "great", "little",
    "long", "high", "good", "best", "right", "left", "open", "close", "early", "late", "public", "market",
    "report", "field", "paper", "garden", "window", "stone", "cloud", "table", "chair", "green", "blue",
    "black", "white", "red", "road", "train", "plane", "ship", "island", "ocean", "forest", "mountain",
    "valley", "village", "country", "north", "south", "east", "west", "summer", "winter", "spring",
    "morning", "evening", "letter", "word", "line", "side", "head", "hand", "face", "door", "room", "floor",
    "wall", "street", "bridge", "tower", "church", "price", "value", "level", "order", "form", "change",
    "rest", "start", "end", "turn", "move", "play", "run", "walk", "talk", "read", "write", "sing", "dance",
    "build", "grow", "learn", "teach", "help", "keep", "give", "take", "bring", "hold", "stand", "sit",
    "fall", "rise", "carry", "pull", "push", "show", "tell", "ask", "answer", "call", "feel", "think",
    "know", "see", "hear", "look", "find", "need", "want", "use", "try", "leave", "meet", "pay", "lead",
    "live", "die", "win", "lose", "send", "set", "put", "cut", "hit", "sell", "buy", "eat", "drink", "sleep",
    "wake", "plan", "test", "study", "model", "data", "code", "file", "user", "class", "type", "image",
    "sound", "voice", "color", "shape", "size", "speed", "force", "energy", "heat", "fire", "earth", "air",
    "metal", "glass", "wood", "rock", "sand", "salt", "sugar", "bread", "milk", "fruit", "apple", "tree",
    "flower", "bird", "fish", "horse", "dog", "cat", "animal", "farm", "food", "health", "doctor", "teacher",
    "student", "friend", "child", "woman", "man", "king", "queen", "army", "war", "peace", "law", "court",
    "police", "bank", "job", "office", "team", "club", "party", "film", "art", "science", "nature", "space",
    "star", "moon", "sun", "planet",
];
