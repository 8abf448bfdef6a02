#!/bin/bash
# /mnt/projects/ICCM/scripts/snapshot_dataset.sh

DATASET_DIR="/mnt/projects/ICCM/datasets/applications"
SNAPSHOT_DIR="/mnt/hdd/dataset_snapshots"
DATE=$(date +%Y%m%d)
VERSION="v3.0"  # Update when dataset changes

# Create snapshot
SNAPSHOT_NAME="iccm_dataset_${VERSION}_${DATE}"
SNAPSHOT_PATH="$SNAPSHOT_DIR/$SNAPSHOT_NAME"

mkdir -p $SNAPSHOT_PATH

# Copy dataset
rsync -av --progress $DATASET_DIR/ $SNAPSHOT_PATH/

# Create manifest
cat > $SNAPSHOT_PATH/manifest.json <<EOF
{
  "version": "$VERSION",
  "snapshot_date": "$(date -u +%Y-%m-%dT%H:%M:%SZ)",
  "total_apps": $(find $SNAPSHOT_PATH -name "metadata.json" | wc -l),
  "train_apps": $(find $SNAPSHOT_PATH/train -name "metadata.json" | wc -l),
  "holdout_apps": $(find $SNAPSHOT_PATH/holdout -name "metadata.json" | wc -l),
  "total_size_bytes": $(du -sb $SNAPSHOT_PATH | cut -f1)
}
EOF

# Compress
tar -czf $SNAPSHOT_DIR/$SNAPSHOT_NAME.tar.gz -C $SNAPSHOT_DIR $SNAPSHOT_NAME
rm -rf $SNAPSHOT_PATH  # Remove uncompressed

# Compute checksum
sha256sum $SNAPSHOT_DIR/$SNAPSHOT_NAME.tar.gz > $SNAPSHOT_DIR/$SNAPSHOT_NAME.tar.gz.sha256

echo "✓ Dataset snapshot created: $SNAPSHOT_NAME.tar.gz"
