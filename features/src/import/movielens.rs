//! MovieLens-100K, from either of its two common shapes in a folder:
//!
//! - GroupLens' originals: `u.data` (tab: user, item, rating, unix seconds),
//!   `u.item` (`|`: id, title, release date `01-Jan-1995`, video date, URL,
//!   19 genre flags; Latin-1), `u.user` (`|`: id, age, gender, occupation, zip);
//! - RecBole's atomic files (`ml-100k.inter`, `.item`, `.user`; tab, with a
//!   typed header such as `user_id:token`; `.item` has `release_year` and a
//!   space-separated `class` of genres).
//!
//! Ratings become `interactions` (kind `rating`, `value` = stars); movies
//! become `items` (genre = the first listed, artist 0 and duration 0 as
//! unknown); users become `users` (birth year = 1998 − age, registered at
//! their first rating). Titles, occupations and zip codes are not kept.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{
    ArrayRef, BooleanArray, Date32Array, Float32Array, Int32Array, Int64Array, RecordBatch,
    StringArray, TimestampMillisecondArray,
};
use chrono::NaiveDate;

use super::{ImportOptions, ImportReport, Rejects, Staging, date32, lines, parse};
use crate::error::{Error, Result};
use crate::schema;

/// The 19 genre flags of `u.item`, in file order.
const GENRES: [&str; 19] = [
    "unknown",
    "Action",
    "Adventure",
    "Animation",
    "Children's",
    "Comedy",
    "Crime",
    "Documentary",
    "Drama",
    "Fantasy",
    "Film-Noir",
    "Horror",
    "Musical",
    "Mystery",
    "Romance",
    "Sci-Fi",
    "Thriller",
    "War",
    "Western",
];

/// The year the MovieLens-100K ages were recorded (ratings 1997-09 to 1998-04).
const AGE_YEAR: i32 = 1998;

struct Files {
    ratings: PathBuf,
    items: PathBuf,
    users: PathBuf,
    recbole: bool,
}

fn files(src: &Path) -> Result<Files> {
    let original = src.join("u.data");
    if original.exists() {
        return Ok(Files {
            ratings: original,
            items: src.join("u.item"),
            users: src.join("u.user"),
            recbole: false,
        });
    }
    let inter = std::fs::read_dir(src)
        .map_err(Error::io(src))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|e| e == "inter"))
        .ok_or_else(|| {
            Error::BadInput(format!(
                "{}: neither u.data (GroupLens) nor a .inter file (RecBole) is there",
                src.display()
            ))
        })?;
    Ok(Files {
        items: inter.with_extension("item"),
        users: inter.with_extension("user"),
        ratings: inter,
        recbole: true,
    })
}

fn release_date(text: &str, recbole: bool) -> Option<NaiveDate> {
    if recbole {
        let year: i32 = text.trim().parse().ok()?;
        NaiveDate::from_ymd_opt(year, 1, 1)
    } else {
        NaiveDate::parse_from_str(text.trim(), "%d-%b-%Y").ok()
    }
}

/// Imports the MovieLens folder `src` into `out`.
pub fn import(src: &Path, out: &Path, options: &ImportOptions) -> Result<ImportReport> {
    let files = files(src)?;
    let mut staging = Staging::new(out)?;
    let mut rejects = Rejects::new();
    let mut notes = vec![("release date not a date (kept null)".to_owned(), 0usize)];

    // Ratings.
    let columns = ["user_id", "item_id", "rating", "timestamp"];
    let (mut users, mut items, mut ts, mut stars) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut first_rating: BTreeMap<i64, i64> = BTreeMap::new();
    for line in lines(&files.ratings)? {
        let (number, text) = line?;
        if text.is_empty() || (files.recbole && number == 1) {
            continue;
        }
        let fields: Vec<&str> = text.split('\t').collect();
        if fields.len() != 4 {
            rejects.push(
                &files.ratings,
                number,
                "line",
                format!("{} tab-separated fields, expected 4", fields.len()),
                &text,
            );
            continue;
        }
        let parsed = (|| {
            let user: i64 = parse(fields[0], "a user id").map_err(|e| (0, e))?;
            let item: i64 = parse(fields[1], "an item id").map_err(|e| (1, e))?;
            let rating: f32 = parse(fields[2], "a rating").map_err(|e| (2, e))?;
            let seconds: f64 = parse(fields[3], "unix seconds").map_err(|e| (3, e))?;
            if !(1.0..=5.0).contains(&rating) {
                return Err((2, format!("{rating} is outside 1..=5")));
            }
            if !(seconds.is_finite() && seconds >= 0.0) {
                return Err((3, format!("{seconds} is not a timestamp")));
            }
            Ok((user, item, rating, (seconds * 1000.0) as i64))
        })();
        match parsed {
            Ok((user, item, rating, millis)) => {
                users.push(user);
                items.push(item);
                stars.push(rating);
                ts.push(millis);
                first_rating
                    .entry(user)
                    .and_modify(|t| *t = (*t).min(millis))
                    .or_insert(millis);
            }
            Err((c, reason)) => rejects.push(&files.ratings, number, columns[c], reason, &text),
        }
    }

    // Movies.
    let (mut item_ids, mut genres, mut released) = (Vec::new(), Vec::new(), Vec::new());
    for line in lines(&files.items)? {
        let (number, text) = line?;
        if text.is_empty() || (files.recbole && number == 1) {
            continue;
        }
        let (separator, expected) = if files.recbole { ('\t', 4) } else { ('|', 24) };
        let fields: Vec<&str> = text.split(separator).collect();
        if fields.len() != expected {
            rejects.push(
                &files.items,
                number,
                "line",
                format!("{} fields, expected {expected}", fields.len()),
                &text,
            );
            continue;
        }
        let id: i64 = match parse(fields[0], "an item id") {
            Ok(id) => id,
            Err(reason) => {
                rejects.push(&files.items, number, "item_id", reason, &text);
                continue;
            }
        };
        let genre = if files.recbole {
            fields[3].split(' ').next().unwrap_or("unknown").to_owned()
        } else {
            GENRES
                .iter()
                .zip(&fields[5..])
                .find(|(_, flag)| flag.trim() == "1")
                .map_or("unknown", |(g, _)| g)
                .to_owned()
        };
        let date = release_date(fields[2], files.recbole);
        if date.is_none() {
            notes[0].1 += 1;
        }
        item_ids.push(id);
        genres.push(genre);
        released.push(date.map(date32));
    }

    // Users.
    let (mut user_ids, mut birth_years, mut genders) = (Vec::new(), Vec::new(), Vec::new());
    for line in lines(&files.users)? {
        let (number, text) = line?;
        if text.is_empty() || (files.recbole && number == 1) {
            continue;
        }
        let separator = if files.recbole { '\t' } else { '|' };
        let fields: Vec<&str> = text.split(separator).collect();
        if fields.len() != 5 {
            rejects.push(
                &files.users,
                number,
                "line",
                format!("{} fields, expected 5", fields.len()),
                &text,
            );
            continue;
        }
        let parsed = (|| {
            let id: i64 = parse(fields[0], "a user id").map_err(|e| ("user_id", e))?;
            let age: i32 = parse(fields[1], "an age").map_err(|e| ("age", e))?;
            if !(1..=120).contains(&age) {
                return Err(("age", format!("{age} is outside 1..=120")));
            }
            Ok((id, AGE_YEAR - age, fields[2].trim().to_owned()))
        })();
        match parsed {
            Ok((id, year, gender)) => {
                user_ids.push(id);
                birth_years.push(year);
                genders.push(gender);
            }
            Err((column, reason)) => rejects.push(&files.users, number, column, reason, &text),
        }
    }
    let rejected = rejects.settle(options)?;

    let n = users.len();
    staging.write(
        "interactions",
        RecordBatch::try_new(
            schema::interactions(),
            vec![
                Arc::new(Int64Array::from(users)) as ArrayRef,
                Arc::new(Int64Array::from(items)),
                Arc::new(TimestampMillisecondArray::from(ts).with_timezone("UTC")),
                Arc::new(StringArray::from(vec!["rating"; n])),
                Arc::new(Float32Array::from(stars)),
            ],
        )?,
    )?;
    let m = item_ids.len();
    staging.write(
        "items",
        RecordBatch::try_new(
            schema::items(),
            vec![
                Arc::new(Int64Array::from(item_ids)) as ArrayRef,
                Arc::new(Int64Array::from(vec![0; m])),
                Arc::new(StringArray::from(genres)),
                Arc::new(StringArray::from(vec![None::<&str>; m])),
                Arc::new(Int32Array::from(vec![0; m])),
                Arc::new(Date32Array::from(released)),
            ],
        )?,
    )?;
    let registered: Vec<Option<i64>> = user_ids
        .iter()
        .map(|u| first_rating.get(u).copied())
        .collect();
    if let Some(i) = registered.iter().position(Option::is_none) {
        return Err(Error::BadInput(format!(
            "{}: user {} has no rating, so no registration time can be derived",
            files.users.display(),
            user_ids[i]
        )));
    }
    let k = user_ids.len();
    staging.write(
        "users",
        RecordBatch::try_new(
            schema::users(),
            vec![
                Arc::new(Int64Array::from(user_ids)) as ArrayRef,
                Arc::new(TimestampMillisecondArray::from(registered).with_timezone("UTC")),
                Arc::new(StringArray::from(vec![None::<&str>; k])),
                Arc::new(Int32Array::from(birth_years)),
                Arc::new(StringArray::from(genders)),
                Arc::new(StringArray::from(vec![None::<&str>; k])),
                Arc::new(BooleanArray::from(vec![true; k])),
            ],
        )?,
    )?;
    staging.publish("movielens", rejected, notes)
}
